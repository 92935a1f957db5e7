"""Smoke test: the tiny MLP for one epoch on Fashion-MNIST — seconds on a CPU.

harness train --config configs/smoke.py --workdir runs/smoke
"""

from harness.config import base_config


def get_config():
    c = base_config()
    c.dataset = "fashion_mnist"
    c.model = "mlp_tiny"
    c.num_epochs = 1
    c.batch_size = 256
    c.learning_rate = 3e-3
    return c

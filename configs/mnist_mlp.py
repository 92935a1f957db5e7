"""The MLP on MNIST: 10 epochs of Adam at batch 128.

    harness train --config configs/mnist_mlp.py --workdir runs/mnist_mlp

RESULT_PLACEHOLDER
"""

from harness.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist"
    c.model = "mlp"
    c.num_epochs = 10
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    return c

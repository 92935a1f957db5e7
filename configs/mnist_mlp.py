"""The MLP on MNIST: 10 epochs of Adam at batch 128, 1 epoch of warmup then cosine decay.

    harness train --config configs/mnist_mlp.py --workdir runs/mnist_mlp

Expected: about 0.98 test accuracy (not measured here: this machine has no MNIST files and no internet; the same
recipe reaches 0.897 on Fashion-MNIST, see fashion_mnist_mlp.py).
"""

from harness.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist"
    c.model = "mlp"
    c.num_epochs = 20
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 5e-3
    c.schedule = "warmup_cosine"
    c.warmup_epochs = 1.0
    return c

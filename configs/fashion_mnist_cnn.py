"""The CNN on Fashion-MNIST: 10 epochs of Adam at batch 128.

    harness train --config configs/fashion_mnist_cnn.py --workdir runs/fashion_mnist_cnn

RESULT_PLACEHOLDER
"""

from harness.config import base_config


def get_config():
    c = base_config()
    c.dataset = "fashion_mnist"
    c.model = "cnn"
    c.num_epochs = 10
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    return c

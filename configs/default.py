"""The default config: the CNN on Fashion-MNIST (what `harness train` runs). Same as fashion_mnist_cnn.py.

    harness train

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

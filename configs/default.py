"""The default config: the CNN on Fashion-MNIST (what `harness train` runs). Same as fashion_mnist_cnn.py.

    harness train

Measured on this project's 2-core Xeon CPU (jax 0.10.2, float32, pmap on 1 device), real Fashion-MNIST:
test accuracy 0.9222 on the full 10 000-image test split after 10 epochs (0.9114 after 6), 349 s of training
(~1.7k examples/s; `harness train` prints both).
"""

from harness.config import load


def get_config():
    return load("fashion_mnist_cnn")

"""The default config: the CNN on Fashion-MNIST (what `harness train` runs). Same as fashion_mnist_cnn.py.

    harness train

Measured on this project's 2-core Xeon CPU (jax 0.10.2, float32), real Fashion-MNIST, full 10 000-image test
split: with the automatic split into 4 CPU devices, test accuracy 0.9207 after 10 epochs, 194 s of training
(~3.1k examples/s); on 1 device (HARNESS_CPU_DEVICES=1) 0.9222, 349 s (~1.7k examples/s).
"""

from harness.config import load


def get_config():
    return load("fashion_mnist_cnn")

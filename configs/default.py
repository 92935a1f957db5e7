"""The default config: the CNN on Fashion-MNIST (what `harness train` runs). Same as fashion_mnist_cnn.py.

    harness train

Measured on this project's 2-core Xeon CPU (jax 0.10.2, float32), real Fashion-MNIST, full 10 000-image test
split: test accuracy 0.9202 after 10 epochs, 138 s of training (~4.4k examples/s, with the CPU formulation
chosen automatically: slice convolutions, 4 micro-batches, 16 steps per dispatch); with
`--config.conv=xla --config.micro_batches=1 --config.steps_per_dispatch=1` 0.9222 in 349 s (~1.7k examples/s).
"""

from harness.config import load


def get_config():
    return load("fashion_mnist_cnn")

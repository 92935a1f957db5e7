"""The MLP on MNIST: fashion_mnist_mlp.py on MNIST (20 epochs of Adam at batch 128, warmup then cosine decay).

    harness train --config configs/mnist_mlp.py --workdir runs/mnist_mlp

Expected: about 0.98 test accuracy (not measured here: this machine has no MNIST files and no internet; the same
recipe reaches 0.897 on Fashion-MNIST, see fashion_mnist_mlp.py).
"""

from harness.config import load


def get_config():
    c = load("fashion_mnist_mlp")
    c.dataset = "mnist"
    return c

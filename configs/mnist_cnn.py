"""The CNN on MNIST: 10 epochs of SGD with momentum at batch 128.

    harness train --config configs/mnist_cnn.py --workdir runs/mnist_cnn

Hyper-parameters of Flax's MNIST example (SGD, learning rate 0.1, momentum 0.9, batch 128, 10 epochs) with the same
CNN; expected: about 99 % test accuracy (the example's README shows 99.07 % after epoch 10). Not measured here: this
machine has no MNIST files and no internet.
"""

from harness.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist"
    c.model = "cnn"
    c.num_epochs = 10
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    return c

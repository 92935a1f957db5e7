"""fashion_mnist_best's recipe on MNIST digits: the same model, augmentation, dropout, label smoothing,
EMA and schedule. `augment_flip=auto` mirrors clothes only, so mnist trains unflipped: nothing else in the recipe is
specific to Fashion-MNIST.

    harness data import DIR --dataset mnist   # the four IDX files (not shipped with harness)
    harness train --config mnist_best --workdir runs/mnist_best

Not measured here: the mnist files are not on this project's machine, which is offline (only Debian's
Fashion-MNIST is); the config is tested end to end on generated IDX files.
Any `--config.num_epochs=N` evaluates an EMA of the recent weights (its decay warms up as min(0.999, (1+t)/(10+t))):
tested on generated digits to evaluate within 0.5 points of the raw weights after 2 epochs.
Published anchors: a single small CNN with BatchNorm and augmentation averages 0.9964 (cdeotte/MNIST-CNN-99.75).
"""

from harness import config as config_lib


def get_config():
    c = config_lib.load("fashion_mnist_best")  # the one source of the recipe
    c.dataset = "mnist"
    return c

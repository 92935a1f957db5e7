"""Data: IDX files, tfds builders that prepare without TensorFlow, and batch order."""

# The datasets harness knows: the one list that config validation, the command line and the tfds builders
# (harness.data.datasets.BUILDERS) read. Here, in the package's light __init__, so `harness.cli` need not import
# tensorflow_datasets to list them.
NAMES = ("mnist", "fashion_mnist", "kmnist")

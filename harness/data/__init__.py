"""Data: IDX files, tfds builders that prepare without TensorFlow, and batch order."""

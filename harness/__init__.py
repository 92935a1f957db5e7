"""harness: a JAX/Flax NNX training harness for MNIST and Fashion-MNIST."""

__version__ = "0.1.0"

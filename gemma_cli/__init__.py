"""gemma: fine-tune Gemma models with Keras 3, keras-hub and JAX from YAML run configs."""

__version__ = "0.1.0"

"""The only package that imports keras, keras_hub, jax, tensorflow and tensorflow_datasets.

Call `runtime.setup()` before anything else in here: environment variables only work when
they are set before the first import.
"""

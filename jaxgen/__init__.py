"""jaxgen: VAEs and GANs in JAX, from a laptop CPU to an accelerator pod.

Importing this package is light: TensorFlow and TFDS are imported only where data is prepared or read.
"""

__version__ = "0.1.0"

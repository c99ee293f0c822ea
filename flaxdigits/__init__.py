"""flaxdigits: train, evaluate and use Flax linen CNNs on handwritten digits.

Modules are imported on demand (``from flaxdigits.models import CNN``) so that using the
model does not pull in the data or training stacks.
"""

__version__ = "0.1.0"

"""flaxdigits: train, evaluate and use Flax linen CNNs on handwritten digits.

Modules are imported on demand (``from flaxdigits.models import CNN``) so that using the
model does not pull in the data or training stacks. The facts about the digits live here,
once: every module that needs them imports this package anyway.

Layout (data flows down this list): config (the rules of a config), data (sources ->
splits -> padded batches), models, augment, parallel, training (steps, optimizer, hooks,
the loop), checkpoint (the only orbax module), workdir (its files), evaluation
(inference, metrics, plots, report), serving (preprocessing, the web app), logs.
"""

__version__ = "0.1.0"

NUM_CLASSES = 10  # the digits 0..9
IMAGE_SIDE = 28  # MNIST images are 28x28 pixels, one channel

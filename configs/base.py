"""The default run: the seed's CNN, trained with Adam on MNIST.

    python launch.py --config=configs/base.py --workdir=runs/base

Measured on the 2-core development CPU (2026-11-27, a fresh clone, MNIST fetched into the
cache on the way, one JAX device per core): MNIST test accuracy 0.9925 after 10 epochs (seed
0, best checkpoint by validation), 3 min 46 s wall time for the whole process (216 s of
training, about 2,500 training images/s).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Parameter initialisation, the order of training examples, dropout and augmentation.
    config.seed = 0
    config.num_epochs = 10  # passes over the training split
    config.batch_size = 128  # training examples per step
    config.eval_batch_size = 1000  # fixed evaluation batch; the last one is padded and masked
    # Training loss/accuracy and speed logged this often (steps); 0 = at epoch ends only.
    config.log_every_steps = 100
    config.checkpoint_every_steps = 0  # save this often (and at each epoch end); 0 = per epoch
    config.keep_checkpoints = 3  # most recent checkpoints kept, plus the best by validation
    # Training steps traced with jax.profiler into W/profile/ (open in Perfetto or
    # TensorBoard's profile tab), starting after the first PROFILE_AFTER_STEPS steps of the
    # process, so that compilation is not traced; 0 = no trace.
    config.profile_steps = 0
    # Computation dtype: 'float32', or 'bfloat16' (parameters and optimizer stay float32;
    # the loss is computed in float32). bfloat16 is what TPUs and recent GPUs are built for.
    config.dtype = "float32"

    config.data = ml_collections.ConfigDict()
    # 'files': the folder `dir` (MNIST IDX files or Kaggle CSVs), or, with no `dir`, MNIST
    # fetched once into the cache; 'tfds': tensorflow-datasets `mnist`.
    config.data.source = "files"
    config.data.dir = ""  # folder of MNIST IDX files or Kaggle train.csv; "" = cached MNIST
    config.data.cache_dir = ""  # where MNIST is fetched to; "" = $FLAXDIGITS_CACHE or ~/.cache/flaxdigits
    config.data.tfds_data_dir = ""  # tensorflow-datasets data_dir; "" = its default
    config.data.validation_fraction = 0.1  # of each class, held out of training for validation
    config.data.split_seed = 0  # which examples are held out (fixed across model seeds)
    # Extra training examples, this share of the split, shaped like the number reader's cuts
    # (halves of digits and pairs with the uniform target, digits with a neighbour's sliver;
    # flaxdigits/data/cut_pieces.py); 0 = none.
    config.data.cut_pieces = 0.0
    # And this share of the reader's own candidates cut from numbers written with the
    # training digits (labelled by which digit's ink they hold, or uniform where none).
    config.data.read_pieces = 0.0

    config.model = ml_collections.ConfigDict()
    config.model.name = "cnn"  # a key of flaxdigits.models.MODELS
    config.model.conv_features = (32, 64)  # channels of each conv 3x3 -> max-pool 2x2 block
    config.model.dense_features = 128  # width of the hidden dense layer
    config.model.dropout_rate = 0.5  # dropout after the hidden dense layer, in training only

    # On-device augmentation of training batches (flaxdigits/augment.py); all 0 = off, as
    # the seed's recipe has none.
    config.augment = ml_collections.ConfigDict()
    config.augment.rotation_degrees = 0.0  # each digit turned by up to this, either way
    config.augment.scale = 0.0  # resized by a factor in [1 - scale, 1 + scale]
    config.augment.translation_pixels = 0.0  # moved by up to this along each axis
    # Elastic distortion (Simard et al. 2003): smooth random displacements, alpha pixels
    # times uniform noise smoothed by a Gaussian of sigma pixels; 34 and 4 are Simard's.
    config.augment.elastic_alpha = 0.0
    config.augment.elastic_sigma = 4.0
    config.augment.clean_final_epochs = 0  # the last epochs train on the digits as they are

    # How evaluate, predict and the end-of-training report predict
    # (flaxdigits/evaluation/inference.py).
    config.inference = ml_collections.ConfigDict()
    config.inference.tta_views = 1  # test-time views averaged: 1 = none; up to 9 (1-px
    # shifts, +-6 degree turns, +-8% sizes)
    config.inference.ensemble_workdirs = ()  # other trained workdirs averaged with this one

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-3  # Adam's (peak) learning rate
    # 'constant'; 'cosine' decay to 0 over the run; 'one_cycle' (warm up for
    # `warmup_fraction` of the run, then cosine-anneal)
    config.optim.schedule = "cosine"
    config.optim.warmup_fraction = 0.25  # used by 'one_cycle' only
    config.optim.b1 = 0.9  # Adam's decay rate of the gradient's running mean
    config.optim.b2 = 0.999  # Adam's decay rate of the squared gradient's running mean
    # A moving average of the parameters, kept this much of itself per step, is what
    # validation, checkpoints' inference and the report use; 0 = none (the parameters).
    config.optim.ema_decay = 0.0
    config.optim.label_smoothing = 0.0  # share of each training target spread over all 10

    # A segmentation-free reader of whole lines of digits (models.LineReader, CTC), trained
    # after the classifier on lines written with the training digits
    # (flaxdigits/training/line.py) and saved in W/line_reader/; the number reader
    # (serving/reading.py) weighs its reading against segmentation's. 0 steps = none.
    config.line_reader = ml_collections.ConfigDict()
    config.line_reader.steps = 0
    config.line_reader.batch_size = 64  # lines per step
    config.line_reader.learning_rate = 2e-3  # Adam's peak (warmup, then cosine decay)
    config.line_reader.glyphs = 20_000  # training digits redrawn (pen, brush) to compose lines of
    return config

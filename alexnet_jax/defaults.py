"""Every config key, with its default: the paper's recipe, AlexNet on ImageNet (Krizhevsky, Sutskever,
Hinton, 2012).

`get_config()` is the one place a key is defined; configs/default.py returns it as it is, and every
other config (configs/smoke.py, configs/fashion_mnist.py, ...) starts from it and changes what it
must. A workdir's config.json written before a key existed reads back with that key's default
(`workdir.load_config`). `alexnet_jax/config_validation.py` holds what each key allows.

Run the recipe with

  python -m alexnet_jax.main --config=configs/default.py --workdir=/path/to/workdir

once ImageNet is prepared (README, "ImageNet"). Any key can be overridden on the command line,
e.g. `--config.model.groups=1`.
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """The `AlexNet` constructor fields (alexnet_jax/model.py), one key each."""
  model = ml_collections.ConfigDict()
  model.variant = 'paper'  # 'paper' | 'torchvision'
  model.groups = 2  # the paper's two-GPU split of conv2, conv4, conv5 (§3.2, §3.5)
  model.lrn = True  # local response normalization after conv1, conv2 (§3.3)
  model.activation = 'relu'  # 'relu' | 'tanh' (§3.1, Figure 1)
  model.overlapping_pool = True  # 3x3 stride 2 pools; False: 2x2 stride 2 (§3.4)
  model.dropout_rate = 0.5  # on the outputs of fc6 and fc7 (§4.2)
  model.width = 1.0  # multiplies every conv and fc width
  # 'he' trains from scratch out of the box. The paper's N(0, 0.01^2) with bias 1
  # needs its hand-tuned schedule and often stalls for many epochs; see README, "Init".
  model.init_scheme = 'he'  # 'paper' | 'he'
  model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'; params stay float32
  # How convolutions and max-pools are computed (the same function): 'auto' | 'lax' | 'cpu_ops'.
  # 'auto' takes alexnet_jax/cpu_ops.py's rewrites on CPU, XLA's own kernels elsewhere (GPU).
  model.conv_impl = 'auto'
  # conv1's kernel and stride; 0 keeps the layout's 11 and 4 (sized for 224-pixel photos).
  # 5 and 1 fit 28-32 pixel images (configs/fashion_mnist.py).
  model.conv1_kernel = 0
  model.conv1_stride = 0
  # §7's depth ablation: 0 keeps all five convolutions; 2, 3 or 4 removes that one (its pool stays).
  model.remove_conv = 0
  return model


def get_augment_config() -> ml_collections.ConfigDict:
  """The paper's data augmentation (§4.1), each part a switch."""
  augment = ml_collections.ConfigDict()
  augment.random_crop = True  # random image_size crop of the resize_size image
  augment.flip = True  # random horizontal reflection
  augment.pca_lighting = 0.1  # std of the PCA colour-noise coefficients; 0 disables
  augment.subtract_mean = True  # subtract the per-channel mean
  augment.divide_std = True  # then divide by the per-channel std: unit-scale inputs for He init
  # Whose pixel statistics (per-channel mean and std, RGB covariance eigenvectors for the lighting
  # noise) the run uses: 'imagenet', the published values (§4.1 computed them "throughout the
  # ImageNet training set"), or 'dataset': measured on config.train_split, once, cached beside
  # the data (alexnet_jax/data/statistics.py).
  augment.statistics = 'imagenet'  # 'imagenet' | 'dataset'
  # With statistics='dataset', the run fills these in at start and records them in config.json, so
  # that evaluate, predict and neighbors use what training used. Leave them unset.
  augment.mean_rgb = ml_collections.config_dict.placeholder(tuple)  # 0..255 scale
  augment.std_rgb = ml_collections.config_dict.placeholder(tuple)
  augment.pca_eigenvalues = ml_collections.config_dict.placeholder(tuple)
  augment.pca_eigenvectors = ml_collections.config_dict.placeholder(tuple)  # rows RGB, columns components
  return augment


def get_config() -> ml_collections.ConfigDict:
  """Every key of a config, set to the paper's recipe on ImageNet."""
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = 'imagenet2012'  # TFDS name | 'folder:/path' | 'synthetic' | 'synthetic_learnable'
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data dir; None = TFDS default
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.num_classes = 1000
  config.image_size = 227  # crop fed to the network (§3.5 says 224; its arithmetic needs 227)
  config.resize_size = 256  # shorter side before cropping (§2)
  # Crops come from the central resize_size square of the resized image, the 256x256 images the
  # paper trained and tested on (§2, §4.1); False: from anywhere in the whole resized image.
  config.center_square = True
  # Training windows up to this many times image_size on a side (336 source pixels, images up to
  # ~379 on their shorter side) reach the device whole, in regions of that size, and are resized to
  # image_size there: the host only decodes (docs/benchmarks.md, "Input pipeline"). 0: every crop
  # is resized on the host (better for images stored at shorter side 256, perhaps on CPU-only runs).
  config.device_resize_scale = 1.48
  config.augment = get_augment_config()
  config.eval_crops = 1  # 1 = center crop; 10 = corners + center and their mirrors (§4.1)
  config.cache = False  # keep this process's encoded images in memory (small datasets only; saves reads, not decodes)
  config.strict_data = False  # undecodable images: False = skip and log, True = error
  config.synthetic_train_examples = 1_281_167  # dataset='synthetic*' only: split sizes
  config.synthetic_eval_examples = 50_000
  # Train on a class-balanced subset of this many examples of train_split (-1: all of it), the same
  # for every process count and seed (alexnet_jax/data/subset.py): the small-data regime in which
  # dropout and augmentation (§4.1, §4.2) have overfitting to prevent.
  config.train_examples = -1
  # At each eval, also the error on this many training examples (a class-balanced subset of those
  # trained on; -1: all of them; 0: off), preprocessed as eval images are (no augmentation) with
  # dropout off: the train side of an honest train-test gap, logged as split 'eval_train'.
  config.eval_train_examples = 0

  # Optimization (§5).
  config.batch_size = 128  # global, across all devices and processes
  config.eval_batch_size = -1  # global; -1: same as batch_size
  config.num_epochs = 90.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.optimizer = 'sgd'  # 'sgd' | 'lars' | 'adamw'
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.lr_schedule = 'plateau'  # 'plateau' | 'step' | 'cosine' | 'constant'
  config.plateau_patience_epochs = 1.0  # evals without improvement before dividing by 10
  config.plateau_factor = 0.1
  config.plateau_max_reductions = 3  # the paper divided the rate 3 times
  config.step_epochs = (30, 60, 80)  # 'step': epochs at which the rate is divided by 10
  config.warmup_epochs = 0.0
  config.scale_lr_with_batch = False  # if True: lr = learning_rate * batch_size / base_batch_size
  config.base_batch_size = 128

  # Model.
  config.model = get_model_config()

  # Bookkeeping.
  config.init_from = ''  # a workdir (alexnet_jax.convert or a finished run) whose params start this run; fc8 fresh if num_classes differs
  config.seed = 0
  # False: a NaN/Inf loss or gradient stops the run; True: skip the step (not applied, so the rate
  # schedule, which counts applied updates, does not advance either).
  config.skip_nonfinite_steps = False
  config.parallelism = 'shard_map'  # 'shard_map' | 'pmap'
  config.model_parallel = 1  # 2: the paper's two-device split of every layer (a ('data', 'model') mesh)
  config.log_every_steps = 100
  config.eval_every_steps = -1  # -1: once per epoch
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # The longest a checkpoint write may take, and so, in a multi-process run, how long the others wait
  # at Orbax's barriers for a process whose write failed before all stop with the error.
  config.checkpoint_timeout_seconds = 300
  return config

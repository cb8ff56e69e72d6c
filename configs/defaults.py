"""The config every experiment starts from: `get_config(model_name)`.

Sections:
  model  - owned by the model family (gsa_jax/models/<name>/): `registry.get(name).model_config()`; its
           `name` picks the family.
  data   - datasets, clip sampling, augmentation, image sizes (validated by input_pipeline.data_sources).
  train  - optimiser, schedule, checkpoints, logging (validated by gsa_jax.trainer).
  eval   - evaluation protocol and test-time options (validated by gsa_jax.evaluate).
Every field any code reads is declared here or in the model's own section, with a comment; an override of a
field that does not exist is an error that lists the valid ones. Where the official code and its paper
disagree, the default follows the code and the comment gives both values.
"""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # Dataset names: 'synthetic', 'davis16', 'youtubevos', 'fbms', 'ytobj', 'duts', 'synthetic_images'; for the
  # 'clips' training input (SOLV) also 'synthetic_multi', 'davis17', 'ytvis' (input_pipeline.clips).
  d.train = 'synthetic'
  d.train_root = ''  # folder of the training set (the official flat GSANet layout or the original one).
  d.train_sub = ''  # optional second video set mixed 1:1 (official: YouTube-VOS), '' = none.
  d.train_sub_root = ''
  d.val = 'synthetic'  # held-out validation split used for model selection (never the test set); '' = none.
  d.val_root = ''
  d.test = 'synthetic'
  d.test_root = ''
  d.num_refs = 4  # N_R: 4 (official GSA-Net and DPA code) | 3 (GSA-Net paper).
  # Test-time reference frames: 'official' i * (L // N_R) (both released codes) | 'paper' floor(i (L-1) / (N_R-1)).
  d.test_reference_rule = 'official'
  d.image_size = 512  # test size and the largest training size (official 512; GSA-Net paper 384).
  d.multiscale_sizes = (384, 416, 448, 480, 512)  # per-batch training sizes (official); () = image_size only.
  d.flip_flow = False  # True mirrors the flow field on horizontal flips (official: flow colours not mirrored).
  d.augment = True  # the official flip / crop / rotation / colour augmentation.
  d.crop_border = 30  # random crop: up to this many pixels removed per side length (official 30) ...
  d.crop_border_fraction = 0.1  # ... and at most this fraction of the side (keeps tiny frames from over-zooming).
  d.rotation_prob = 0.2  # probability of the random rotation (official 0.2).
  # How much of each dataset is checked before any work (train and val before step 1, test before
  # evaluation): 'all' (every frame: sizes from the headers, truncated JPEG/PNG, every mask's rule) |
  # 'first' (the first annotated frame of each video) | 'none'.
  d.check = 'all'
  d.shuffle_buffer = 1024
  d.prefetch = 2  # batches prefetched by tf.data (0 = AUTOTUNE).
  d.num_parallel_calls = -1  # tf.data workers decoding examples; -1 = AUTOTUNE.
  # Synthetic data (generated into synthetic_root, or <workdir>/data/synthetic, when it does not exist).
  d.synthetic_root = ''
  d.synthetic = ml_collections.ConfigDict(dict(
      num_train_videos=24, num_val_videos=4, num_test_videos=6, num_frames=12, image_size=64,
      difficulty=0.5, num_images=200, seed=0))
  # Multi-object synthetic videos ('synthetic_multi', DAVIS-2017 layout with instance ids; generated into
  # <workdir>/data/synthetic_multi when its root is empty): input_pipeline.synthetic_multi settings.
  d.synthetic_multi = ml_collections.ConfigDict(dict(
      num_train_videos=16, num_val_videos=4, num_frames=(8, 12), frame_sizes=((64, 96),), num_objects=(2, 4),
      letterbox=0.0, bar_sizes=(8, 16), flat_colours=False, flow=False, seed=0))
  # The 'clips' training input (SOLV, Betrayed by Attention): clips of 2N + 1 frames, N = clip_half_window (must
  # equal model.half_window), each frame resized to clip_size (height, width) (must equal model.image_size) after
  # removing its black borders (clip_borders, the released YTVIS loader).
  d.clip_half_window = 2
  d.clip_size = (336, 504)
  d.clip_borders = True
  d.ytvis_splits = ('train', 'valid', 'test')  # YouTube-VIS splits merged for 'clips' training (released: all).
  # Frame stride s of a clip: frames t - N s .. t + N s (1 = consecutive, SOLV; Betrayed by Attention: 4).
  d.clip_stride = 1
  # A clip that does not fit in its video: 'pad' (zero frames, 0 in frame_mask; SOLV) | 'shrink' (Betrayed by
  # Attention: the stride falls until the clip fits, the centre is clamped, every frame real).
  d.clip_fit = 'pad'
  # Resize: True = bilinear with antialiasing, as PIL (SOLV) | False = cv2 INTER_LINEAR (Betrayed by Attention).
  d.clip_antialias = True
  # Clip augmentation, one draw per clip for all of its frames: 'none' (SOLV) | 'betrayed' (grayscale, colour
  # jitter and blur of Betrayed by Attention; input_pipeline.clip_augment).
  d.clip_augment = 'none'
  return d


def train_config() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.batch_size = 16  # global batch (GSA-Net official 16 on 2 GPUs; paper 12).
  t.num_epochs = 200
  t.num_train_steps = -1  # > 0 overrides num_epochs; -1 = num_epochs x steps per epoch.
  t.learning_rate = 1e-4
  t.end_learning_rate = 1e-5  # cosine 1e-4 -> 1e-5 stepped every iteration (official).
  t.warmup_steps = 0
  # 'cosine' (learning_rate -> end_learning_rate, after warmup_steps) | 'warmup_halvings' (SOLV released: a
  # linear warm-up from learning_rate x warmup_start_factor over warmup_fraction of the steps, then halving
  # `halvings` times over the rest; end_learning_rate and warmup_steps unused).
  t.schedule = 'cosine'
  t.warmup_fraction = 0.05
  t.warmup_start_factor = 1e-5
  t.halvings = 3
  t.b1 = 0.9
  t.b2 = 0.999
  t.eps = 1e-8
  t.weight_decay = 0.0  # > 0: AdamW.
  # What AdamW decays: 'all' (every trained parameter) | 'matrices' (parameters of 2 or more dimensions only:
  # weights, not biases or norm scales; Betrayed by Attention as released).
  t.weight_decay_mask = 'all'
  t.grad_clip_norm = 0.0  # 0 = off (official: off).
  t.init_from = ''  # checkpoint dir to initialise from (stage-1 model, or a converted checkpoint).
  t.log_every_steps = 50
  t.eval_every_steps = 1000
  t.checkpoint_every_steps = 1000
  t.keep_checkpoints = 3
  t.write_images_every_steps = 1000
  return t


def eval_config() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.protocol = 'davis16'  # 'davis16' | 'fbms' | 'ytobj'
  e.batch_size = 8
  e.threshold = 0.5
  e.tta = False  # multi-scale + horizontal flip (the paper's starred rows).
  e.tta_scales = (0.75, 1.0, 1.25)
  e.seed = 0  # key of stochastic inference (GSA-Net's k-means init): two evaluations give the same numbers.
  e.max_videos = -1  # -1 = all.
  e.num_overlays = 3  # evaluation pictures: overlay strips of the first N videos.
  return e


def get_config(model: str = 'gsanet') -> ml_collections.ConfigDict:
  """The defaults of every section, with the model section of the family registered as `model`."""
  from gsa_jax import registry  # pylint: disable=g-import-not-at-top
  family = registry.get(model)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = family.model_config()
  config.data = data_config()
  config.train = train_config()
  config.eval = eval_config()
  # A family may name its own default protocol (instance-mask models: e.g. SOLV's 'fgari_miou') and set its
  # released values of the shared sections (e.g. Betrayed by Attention's 3-frame clips and optimiser).
  config.eval.protocol = getattr(family, 'default_protocol', config.eval.protocol)
  released = getattr(family, 'released_defaults', None)
  if released is not None:
    released(config)
  return config


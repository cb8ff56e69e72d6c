"""Shared defaults for every experiment config.

The defaults reproduce the official GSANet code (Hydragon516/GSANet @ 9a8eb07). Every place where the
official code and the paper's text disagree is a named switch here; the comment gives both values.
Experiment files in `configs/` start from `get_config()` below and change what they need.

Sections:
  model  - the network (backbone, slot branch, ablation switches).
  data   - datasets, clip sampling, augmentation, image sizes.
  train  - optimiser, schedule, loss, checkpoints, logging.
  eval   - evaluation protocol and test-time options.
"""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  # 'video': the two-stream GSANet; 'saliency': the stage-1 RGB-only model (no slots, no flow).
  m.kind = 'video'
  # Backbone: mit_b0..mit_b5 (SegFormer encoder; official: mit_b2), resnet18/34/50/101, tiny_cnn (tests).
  m.backbone = 'mit_b2'
  m.drop_path_rate = 0.1  # MiT stochastic depth (official 0.1).
  m.dim = 128  # working width C of MFFM outputs and the slot branch.
  m.num_slots = 2  # N_S: slot 0 = foreground, slot 1 = background (through supervision).
  # Local extractor (k-means on the 1/16 target feature).
  m.num_clusters = 64  # M.
  m.kmeans_iters = 10  # Lloyd iterations, fixed count under jit (official max_iter=10).
  m.kmeans_init = 'random'  # 'random' (official: rows drawn with replacement) | 'kmeans++' | 'strided'.
  m.kmeans_assign = 'hard'  # 'hard' (official, stop-gradient one-hot) | 'soft' (differentiable).
  m.kmeans_temperature = 1.0  # temperature of the soft assignment.
  m.prototype_reduce = 'sum'  # k-means prototypes: 'sum' of members (official) | 'mean' (paper, GWAP).
  m.slot_pool = 'sum'  # guided slots: softmax-weighted 'sum' (official) | 'mean' (paper eq. 2, GWAP).
  # Guided slot attention.
  m.slot_iters = 3  # T.
  m.knn_k = 16  # N nearest prototypes per slot.
  # KNN search pool: 'aggregated' (official: only the M FAT-aggregated prototypes, through the
  # prototype_filter overwrite bug) | 'aggregated_and_reference' (paper: aggregated + reference prototypes).
  m.knn_pool = 'aggregated'
  m.fat_dropout = 0.3  # dropout in the FAT's small transformer blocks (official 0.3).
  m.cosine_eps = 1e-8  # eps in cosine similarities (official: none; 0.0 reproduces it).
  # Table 2 ablation switches (all True = row (f), the full model).
  m.use_guided_slots = True  # False: learned randomly initialised slots (Slot Attention style).
  m.use_knn = True  # False: slots attend to all prototypes.
  m.use_slot_attention = True  # False: no slot refinement (and no slot branch at all if GS is off too).
  m.use_fat = True  # False: the standard transformer update of the original slot attention.
  m.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (params stay float32).
  return m


def data_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # Dataset names: 'synthetic', 'davis16', 'youtubevos', 'fbms', 'ytobj', 'duts', 'synthetic_images'.
  d.train = 'synthetic'
  d.train_root = ''  # folder of the training set (the official flat GSANet layout or the original one).
  d.train_sub = ''  # optional second video set mixed 1:1 (official: YouTube-VOS), '' = none.
  d.train_sub_root = ''
  d.val = 'synthetic'  # held-out validation split used for model selection (never the test set).
  d.val_root = ''
  d.test = 'synthetic'
  d.test_root = ''
  d.num_refs = 4  # N_R: 4 (official code) | 3 (paper).
  d.image_size = 512  # test size and the largest training size (official 512; paper 384).
  d.multiscale_sizes = (384, 416, 448, 480, 512)  # per-batch training sizes (official); () = image_size only.
  d.flip_flow = False  # True mirrors the flow field on horizontal flips (official: flow colours not mirrored).
  d.augment = True
  d.shuffle_buffer = 1024
  d.prefetch = 2
  d.num_parallel_calls = -1  # tf.data.AUTOTUNE
  # Synthetic data (generated into synthetic_root when it does not exist).
  d.synthetic_root = ''
  d.synthetic = ml_collections.ConfigDict(dict(
      num_train_videos=24, num_val_videos=4, num_test_videos=6, num_frames=12, image_size=64,
      difficulty=0.5, num_images=200, seed=0))
  return d


def train_config() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.batch_size = 16  # global batch (official 16 on 2 GPUs; paper 12).
  t.num_epochs = 200
  t.num_train_steps = -1  # > 0 overrides num_epochs.
  t.learning_rate = 1e-4
  t.end_learning_rate = 1e-5  # cosine 1e-4 -> 1e-5 stepped every iteration (official).
  t.warmup_steps = 0
  t.b1 = 0.9
  t.b2 = 0.999
  t.eps = 1e-8
  t.weight_decay = 0.0
  t.grad_clip_norm = 0.0  # 0 = off (official: off).
  t.loss = 'official'  # 'official' (double sigmoid, unit weights, 10 maps) | 'f3net' (paper: weighted BCE+IoU on logits).
  t.aux_loss_weight = 1.0  # weight of the 6 slot maps in the loss (official 1).
  t.init_from = ''  # checkpoint dir to initialise from (stage-1 model, or a converted checkpoint).
  t.transfer_mffm_branches = True  # False reproduces the official key mismatch that drops MFFM branch weights.
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
  e.kmeans_seed = 0  # fixed k-means key: two evaluations of a checkpoint give the same numbers.
  e.max_videos = -1  # -1 = all.
  return e


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config()
  config.data = data_config()
  config.train = train_config()
  config.eval = eval_config()
  return config

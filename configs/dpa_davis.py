"""Stage 2 exactly as the official DPA code (Hydragon516/DPA @ 649e60a): VGG-16, DAVIS-16 + YouTube-VOS 1:1.

  python main.py --mode=summary --config=configs/dpa_davis.py
      -> parameter tables; last line `total_params: 40200420`: the official video model (43,625,704) minus
         what never gets a gradient in its forward (the never-called DAM4/DAM5, the fuse5 convs, the unused
         sq4 convs and IFA's unused value convs). With --config.model.ima=official_dam
         --config.model.ifa_values=values: 43492580, the paper's Table 2 row IV.
  python main.py --mode=train --config=configs/dpa_davis.py --workdir=DIR \
      --config.data.train_root=DAVIS_TRAIN --config.data.train_sub_root=YTVOS_TRAIN \
      --config.data.val_root=HELD_OUT_VIDEOS --config.data.test_root=DAVIS16_VAL \
      --config.train.init_from=STAGE1_WORKDIR   # from configs/dpa_pretrain_duts.py
      -> the released forward is the paper's Table 1/2 row III (IFA only; G 85.4 at 352x352); the paper's
         full model (row IV) reports DAVIS-16 G 87.6 (J 86.8, F 88.4) at 512 and FBMS J 83.4. No official
         weights exist to check either figure.
  python main.py --mode=convert --kind=dpa --source=best_model.pth --output=DIR
      -> an official stage-2 checkpoint ({'epoch', 'model_state_dict'}, with or without `module.`) as a
         checkpoint of this config (evaluate / predict --checkpoint=DIR).

Official setting: N_R = 4 reference frames (4 at random from the whole video in training; frames 0, L/4,
L/2, 3L/4 at test), multi-scale training {384, 416, ..., 512} per batch, testing at 512, batch 12, Adam 1e-4
-> 1e-5 cosine per iteration over 200 epochs, YouTube-VOS mixed 1:1 with DAVIS, the soft-Jaccard IoU loss on
the 4 side maps, N(0, 0.01) conv init. Every model switch keeps its official value (gsa_jax/models/dpa/
config.py); configs/dpa_davis_paper.py is the paper's text.
Differences that remain: model selection on data.val (held-out videos), never on the test set as the
official loop does; BatchNorm statistics over the global batch (SyncBN) instead of per GPU (6 per GPU); the
validation does not min-max normalise each frame before the 0.5 threshold.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('dpa')
  m = config.model
  m.kind = 'video'
  m.ima = 'off'
  m.use_ifa = True
  m.ifa_values = 'keys'
  m.conv_init = 'normal'
  m.loss = 'iou'

  d = config.data
  d.train = 'davis16'
  d.train_sub = 'youtubevos'
  d.val = 'davis16'    # point val_root at videos held out from training (model selection, not the test set)
  d.test = 'davis16'   # test_root: DAVIS-16 val (the 20 test videos of the unsupervised benchmark)
  d.num_refs = 4
  d.test_reference_rule = 'official'
  d.image_size = 512
  d.multiscale_sizes = (384, 416, 448, 480, 512)

  t = config.train
  t.batch_size = 12
  t.num_epochs = 200
  t.learning_rate = 1e-4
  t.end_learning_rate = 1e-5
  t.warmup_steps = 0
  t.weight_decay = 0.0
  t.grad_clip_norm = 0.0

  config.eval.protocol = 'davis16'
  config.eval.tta = False
  return config

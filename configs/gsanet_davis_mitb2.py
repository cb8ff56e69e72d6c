"""Stage 2 exactly as the official GSANet code (Hydragon516/GSANet @ 9a8eb07): MiT-B2, DAVIS-16 + YouTube-VOS.

  python main.py --mode=summary --config=configs/gsanet_davis_mitb2.py
      -> parameter tables; last line `total_params: 60731528` (the official model minus its never-trained
         parameters: the 2 MiT classifiers, the FATs' convn/convl/convd, Fusion.conv_upsample).
  python main.py --mode=train --config=configs/gsanet_davis_mitb2.py --workdir=DIR \
      --config.data.train_root=DAVIS_TRAIN --config.data.train_sub_root=YTVOS_TRAIN \
      --config.data.val_root=HELD_OUT_VIDEOS --config.data.test_root=DAVIS16_VAL \
      --config.train.init_from=STAGE1_CHECKPOINT   # from configs/gsanet_pretrain_duts.py
      -> the paper reports DAVIS-16 J&F 88.2 (J 87.4) for MiT-b2 at 512 without TTA (Table 1).

Official setting: N_R = 4 reference frames (random from the whole video in training, frames 0, L/4, L/2,
3L/4 at test), multi-scale training {384, 416, ..., 512} per batch, testing at 512, batch 16, Adam 1e-4 ->
1e-5 cosine over 200 epochs, YouTube-VOS mixed 1:1 with DAVIS, the official loss (10 maps). Every model
switch keeps its official value (configs/defaults.py); configs/gsanet_davis_paper.py has the paper-text variant.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('gsanet')
  m = config.model
  m.kind = 'video'
  m.backbone = 'mit_b2'
  m.drop_path_rate = 0.1
  m.dim = 128
  m.num_slots = 2
  m.num_clusters = 64
  m.knn_k = 16
  m.slot_iters = 3

  d = config.data
  d.train = 'davis16'
  d.train_sub = 'youtubevos'
  d.val = 'davis16'    # point val_root at videos held out from training (model selection, not the test set)
  d.test = 'davis16'   # test_root: DAVIS-16 val (the 20 test videos of the unsupervised benchmark)
  d.num_refs = 4
  d.image_size = 512
  d.multiscale_sizes = (384, 416, 448, 480, 512)

  t = config.train
  t.batch_size = 16
  t.num_epochs = 200
  t.learning_rate = 1e-4
  t.end_learning_rate = 1e-5
  config.model.loss = 'official'

  config.eval.protocol = 'davis16'
  return config

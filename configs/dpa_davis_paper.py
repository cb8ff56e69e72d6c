"""DPA as the paper's text describes it, where it differs from the official code (reference §7).

  python main.py --mode=summary --config=configs/dpa_davis_paper.py
      -> last line `total_params: 43492580`: the paper's Table 2 row IV (43.5 M).
  python main.py --mode=train --config=configs/dpa_davis_paper.py --workdir=DIR --config.data.train_root=... \
      --config.data.train_sub_root=... --config.data.val_root=... --config.data.test_root=... \
      --config.train.init_from=STAGE1_WORKDIR
      -> the paper reports DAVIS-16 G 86.9 (J 86.3, F 87.4) at 352x352 for this model (Table 1 row IV); no
         released code or weights produce it.

Differences from the official code (configs/dpa_davis.py):
  IMA wired in at blocks 4 and 5, in parallel with IFA at block 5 and fused by fuse5, as the released code's
    commented-out lines (model.ima='official_dam'; 'paper' is IMA as eqs. 1-7 write it, without the graph
    network and with values from the other modality: it has no official weights);
  IFA with its own value prototypes (eq. 10) instead of the keys read twice (model.ifa_values='values');
  the cross-entropy loss (model.loss='ce') instead of the coded soft-Jaccard IoU;
  test references floor(i (L - 1) / (N_R - 1)) (eq. 8, first and last frame) instead of i * (L // N_R);
  batch 16 instead of 12; 352x352 for training and testing (the ablations) instead of {384..512} / 512.
"""

from configs import dpa_davis


def get_config():
  config = dpa_davis.get_config()
  m = config.model
  m.ima = 'official_dam'
  m.ifa_values = 'values'
  m.loss = 'ce'
  d = config.data
  d.test_reference_rule = 'paper'
  d.image_size = 352
  d.multiscale_sizes = ()
  config.train.batch_size = 16
  return config

"""GSA-Net as the paper's text describes it (where it differs from the official code; reference §7).

  python main.py --mode=summary --config=configs/gsanet_davis_paper.py
      -> the same parameter count as configs/gsanet_davis_mitb2.py (60731528): only behaviour differs.
  python main.py --mode=train --config=configs/gsanet_davis_paper.py --workdir=DIR --config.data.train_root=... \
      --config.data.train_sub_root=... --config.data.val_root=... --config.data.test_root=... \
      --config.train.init_from=STAGE1_CHECKPOINT
      -> no published number is for exactly this setting (the paper's numbers come from the released
         code's setting); compare against configs/gsanet_davis_mitb2.py.

Differences from the official code:
  N_R = 3 reference frames (paper §4.4) instead of 4;
  all images 384x384 for training and testing, no multi-scale (paper §4.4) instead of {384..512}/512;
  KNN over the aggregated AND the reference prototypes (paper §3.5, Fig. 4) instead of only the
    aggregated ones (the official prototype_filter overwrite bug);
  k-means prototypes and guided slots by GWAP, weighted MEANS (paper eq. 2) instead of weighted sums;
  the F3Net loss on logits (weighted BCE + IoU, paper §3.7) instead of the double-sigmoid official loss;
  batch 12 (paper §4.4) instead of 16.
"""

from configs import gsanet_davis_mitb2 as davis_mitb2


def get_config():
  config = davis_mitb2.get_config()
  m = config.model
  m.knn_pool = 'aggregated_and_reference'
  m.prototype_reduce = 'mean'
  m.slot_pool = 'mean'
  d = config.data
  d.num_refs = 3
  d.image_size = 384
  d.multiscale_sizes = ()
  t = config.train
  config.model.loss = 'f3net'
  t.batch_size = 12
  return config

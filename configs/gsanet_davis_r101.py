"""The paper's ResNet-101 row of Table 1 (512x512), otherwise the official stage-2 setting.

  python main.py --mode=summary --config=configs/gsanet_davis_r101.py
      -> parameter tables, last line `total_params: N` (two ResNet-101 encoders, no classifier).
  python main.py --mode=train --config=configs/gsanet_davis_r101.py --workdir=DIR \
      --config.data.train_root=... --config.data.train_sub_root=... --config.data.val_root=... \
      --config.data.test_root=... --config.train.init_from=STAGE1_CHECKPOINT
      -> the paper reports DAVIS-16 J&F 87.7 (J 87.0, F 88.4) and FBMS J 79.2 without TTA.

Only the backbone differs from configs/gsanet_davis_mitb2.py (ResNet-101, ImageNet weights through
`train.init_from` / gsa_jax/convert.py; ResNets have no drop-path). Test size 512 as in the table.
The official code release only has the MiT-b2 model; the ResNet variant reuses every other module.
"""

from configs import gsanet_davis_mitb2 as davis_mitb2


def get_config():
  config = davis_mitb2.get_config()
  config.model.backbone = 'resnet101'
  config.model.drop_path_rate = 0.0
  config.data.image_size = 512
  return config

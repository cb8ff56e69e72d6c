"""Table 2 of the paper: the contribution ablation, one row per config argument (a) ... (f).

  python main.py --mode=train --config=configs/gsanet_ablation.py:e --workdir=DIR --config.data.train_root=... \
      --config.data.train_sub_root=... --config.data.val_root=... --config.data.test_root=... \
      --config.train.init_from=STAGE1_CHECKPOINT
  python main.py --mode=summary --config=configs/gsanet_ablation.py:a

Rows (GS guided slots, KNN filtering, SA slot attention, FAT) and the paper's DAVIS-16 J&F / FBMS J:
  a  -   -   -   -    83.7 / 76.1   baseline: no slot branch at all, MFFM outputs go straight into fusion
  b  -   -   SA  -    84.1 / 76.3   learned random slots (Slot Attention), all prototypes, GRU update
  c  GS  -   SA  -    86.1 / 78.4   guided slots, all prototypes, GRU update
  d  -   KNN SA  -    84.9 / 77.5   random slots, KNN-filtered prototypes, GRU update
  e  GS  KNN SA  -    86.5 / 78.9   guided slots + KNN, GRU update
  f  GS  KNN SA  FAT  87.7 / 79.2   the full model (= configs/gsanet_davis_r101.py)
Without FAT, the slots are updated as in the original Slot Attention (softmax over slots, weighted mean,
GRU, residual MLP) and the slot generator aggregates local and reference prototypes with a standard
cross-attention transformer block. The paper ran the ablation with the ResNet-101 model at 512 (row (f)
equals its Table 1 ResNet-101 row), so the rows start from configs/gsanet_davis_r101.py.
"""

from configs import gsanet_davis_r101 as davis_r101

ROWS = {
    #     use_guided_slots, use_knn, use_slot_attention, use_fat
    'a': (False, False, False, False),
    'b': (False, False, True, False),
    'c': (True, False, True, False),
    'd': (False, True, True, False),
    'e': (True, True, True, False),
    'f': (True, True, True, True),
}


def get_config(row: str = 'f'):
  row = (row or 'f').strip().lower()
  if row not in ROWS:
    raise ValueError(f'Unknown ablation row {row!r}; use configs/gsanet_ablation.py:<row> with row in {sorted(ROWS)}.')
  config = davis_r101.get_config()
  m = config.model
  m.use_guided_slots, m.use_knn, m.use_slot_attention, m.use_fat = ROWS[row]
  return config

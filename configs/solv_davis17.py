"""SOLV fine-tuned on DAVIS-2017 as the paper describes it (appendix B.3; the released code has none of it).

  python main.py --mode=train --config=configs/solv_davis17.py --workdir=DIR \\
      --config.data.train_root=/data/DAVIS --config.train.init_from=YTVIS_WORKDIR
      from a SOLV trained on YouTube-VIS (configs/solv_ytvis.py, or a converted released checkpoint): 300
      epochs on the DAVIS-2017 'train' videos at lr 1e-4 with the released warm-up + halvings schedule,
      without slot merging (model.merge_slots=False, also at evaluation).
  python main.py --mode=evaluate --config=configs/solv_davis17.py --checkpoint=DIR \\
      --config.data.test_root=/data/DAVIS
      the 30 DAVIS-2017 val videos, FG-ARI / mIoU (eval.protocol='fgari_miou'; paper Table 2: mIoU 30.16,
      FG-ARI 32.15) or J&F with --config.eval.protocol=davis17.

The paper's 40K iterations over 300 epochs suggest it fine-tuned on train and val together; this config
trains on 'train' only, so that the val videos it is scored on stay unseen.
"""

from configs import solv_ytvis


def get_config():
  config = solv_ytvis.get_config()
  config.model.merge_slots = False
  d = config.data
  d.train = 'davis17'
  d.test = 'davis17'
  t = config.train
  t.num_epochs = 300
  t.learning_rate = 1e-4
  return config

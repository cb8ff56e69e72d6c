"""Betrayed by Attention as released (shvdiwnkozbw/SSL-UVOS @ d220ef3): DINO ViT-S/8 frozen, DAVIS-2017 scoring.

  python main.py --mode=convert --kind=vit --source=dino_deitsmall8_pretrain.pth --output=weights/dino_vits8
  python main.py --mode=train --config=configs/betrayed_davis.py --workdir=DIR \\
      --config.data.train_root=/data/ytvis2019 --config.train.init_from=weights/dino_vits8
      self-supervised training on YouTube-VIS-19 train frames (the appendix), clips of 3 frames 4 files
      apart at 192x384 with the released colour / blur augmentation, 8 clips per step, 60,000 steps, AdamW
      1e-5 cosine to 1e-6, weight decay 0.1 on the block's weight matrices only.
  python main.py --mode=evaluate --config=configs/betrayed_davis.py --checkpoint=DIR \\
      --config.data.test_root=/data/DAVIS
      DAVIS-2017 val unsupervised at 320x480, keys every 10th frame, tau 1.0, every cluster an object;
      the official per-sequence matching (eval.protocol='davis17'); the released toolkit's per-frame matching
      with up to 300 proposals is eval.protocol='davis17_per_frame'.
  python main.py --mode=summary --config=configs/betrayed_davis.py
      frozen_params: 21670272 (the DINO ViT-S/8, its unused final norm included), trained_params: 1773312.
  python main.py --mode=convert --kind=betrayed --source=checkpoint_dino-s-8.pth --output=DIR
      the released checkpoint ({'model_state_dict' with the encoder inside, 'iteration', 'loss'}) -> our format.

Single-object benchmarks (the appendix's foreground merge at tau 1.6): --config.model.output=foreground
--config.eval.protocol=davis16 --config.data.test=davis16.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('betrayed')  # the model section's defaults are the released model
  d = config.data
  d.train = 'ytvis'
  d.train_root = ''  # --config.data.train_root=<YouTube-VIS-19 root with train/JPEGImages>
  d.ytvis_splits = ('train',)
  d.val = ''  # the released code selects no checkpoint (it keeps the last); set a held-out split to select
  d.test = 'davis17'
  d.test_root = ''
  # The released clips (3 frames 4 files apart, 192x384, colour / blur augmentation) and optimiser (AdamW 1e-5
  # cosine to 1e-6 over 60,000 steps of 8 clips, weight decay 0.1 on weight matrices) are the family's
  # defaults (BetrayedModel.released_defaults).
  d.num_parallel_calls = -1
  t = config.train
  t.log_every_steps = 50
  t.eval_every_steps = 1000
  t.write_images_every_steps = 1000

  e = config.eval
  e.protocol = 'davis17'
  e.batch_size = 8
  return config

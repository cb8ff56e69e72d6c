"""Stage 1 exactly as the official pretrain.py (reference §5.1): the RGB-only SaliencyNet on DUTS-TR.

  python main.py --mode=convert --source=mit_b2.pth --kind=mit --output=data/pretrained/mit_b2
  python main.py --mode=train --config=configs/gsanet_pretrain_duts.py --workdir=workdirs/pretrain_duts \
      --config.data.train_root=data/DUTS-TR --config.train.init_from=data/pretrained/mit_b2

MiT-B2 (ImageNet weights, converted: a 'backbone' scope checkpoint loaded into rgb_encoder) -> MFFM1..4
-> decoder; batch 16; 200 epochs; Adam 1e-4 (default betas/eps, no weight decay) with a per-iteration
cosine schedule down to 1e-5; the official loss over the 4 decoder outputs; multi-scale training
384..512, test size 512; drop-path 0.1. Produces <workdir>/checkpoints/<step>/ for stage 2
(configs with --config.train.init_from=<this workdir>: the rgb_* weights are copied into both streams).

One deliberate difference: the official code picks its best epoch on the DAVIS-16 test frames. We never
select on a test split: data.val is empty here, so the last checkpoint is the result (set data.val /
data.val_root to a held-out video set to keep the best by validation G as well).
Expect about 2 days on 2 GPUs, as the official run; the stage-2 result is what gets scored.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('gsanet')
  config.model.kind = 'saliency'
  config.model.backbone = 'mit_b2'
  config.model.drop_path_rate = 0.1

  d = config.data
  d.train = 'duts'
  d.train_root = 'data/DUTS-TR'
  d.val = ''
  d.val_root = ''
  d.test = 'davis16'
  d.test_root = 'data/DAVIS'
  d.image_size = 512
  d.multiscale_sizes = (384, 416, 448, 480, 512)

  t = config.train
  t.batch_size = 16
  t.num_epochs = 200
  t.num_train_steps = -1
  t.learning_rate = 1e-4
  t.end_learning_rate = 1e-5
  t.warmup_steps = 0
  t.b1, t.b2, t.eps = 0.9, 0.999, 1e-8
  t.weight_decay = 0.0
  t.grad_clip_norm = 0.0
  config.model.loss = 'official'
  t.init_from = 'data/pretrained/mit_b2'
  t.log_every_steps = 50
  t.checkpoint_every_steps = 1000
  t.eval_every_steps = 1000
  t.keep_checkpoints = 3
  return config

"""SOLV as released on YouTube-VIS 2019 (gorkaydemir/SOLV @ b340c0b): DINOv2 ViT-B/14 frozen, 336x504.

  python main.py --mode=convert --kind=vit --source=dinov2_vitb14_pretrain.pth --output=weights/dinov2_vitb14
  python main.py --mode=train --config=configs/solv_ytvis.py --workdir=DIR \\
      --config.data.train_root=/data/ytvis2019 --config.train.init_from=weights/dinov2_vitb14
      self-supervised training on the frames of train + valid + test (data.ytvis_splits, the released
      merge), clips of 5 frames, batch 48, 180 epochs, Adam 4e-4 with the released warm-up + halvings
      schedule, clip 1, token drop 0.5, merging with probability ln(e + 1) / ln(180) in epoch e.
  python main.py --mode=summary --config=configs/solv_ytvis.py
      frozen_params: 86580480 (the DINOv2 ViT-B/14, its unused mask token included), trained_params: 5799521.
  python main.py --mode=convert --kind=solv --source=checkpoint.pt --output=DIR --config=configs/solv_ytvis.py \\
      --config.model.encoder_weights=dinov2_vitb14_pretrain.pth
      a released training checkpoint ('module.' keys, optimiser, argparse args read safely) -> our format.

Evaluation as released (per-frame windows, bilinear upsampling to the ground-truth size, slot tracking,
FG-ARI / mIoU) runs through eval.protocol='fgari_miou' on data.test; the released numbers (paper Table 2:
mIoU 45.32, FG-ARI 29.11) were computed on train videos [600:900] with the released metric
(gsa_jax.multi_object_fgari preset 'solv_released'). Model selection needs a held-out data.val split
(the released code selected on the evaluation videos); none is set here.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('solv')  # the model section's defaults are the released YTVIS-19 model
  d = config.data
  d.train = 'ytvis'
  d.train_root = ''  # --config.data.train_root=<root with train/, valid/, test/ JPEGImages>
  d.val = ''
  d.test = 'ytvis'
  d.test_root = ''
  d.clip_size = (336, 504)
  d.clip_half_window = 2
  d.ytvis_splits = ('train', 'valid', 'test')
  d.num_parallel_calls = -1

  t = config.train
  t.batch_size = 48
  t.num_epochs = 180
  t.num_train_steps = -1
  t.schedule = 'warmup_halvings'
  t.learning_rate = 4e-4
  t.warmup_fraction = 0.05
  t.warmup_start_factor = 1e-5
  t.halvings = 3
  t.grad_clip_norm = 1.0
  t.weight_decay = 0.0
  t.log_every_steps = 50
  t.checkpoint_every_steps = 2000
  t.eval_every_steps = 2000
  t.write_images_every_steps = 2000

  e = config.eval
  e.protocol = 'fgari_miou'
  e.batch_size = 24
  return config

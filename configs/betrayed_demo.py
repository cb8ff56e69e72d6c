"""The Betrayed-by-Attention CPU demo: a small block trained without labels on multi-object synthetic videos.

  python main.py --mode=demo --config=configs/betrayed_demo.py --workdir=workdirs/betrayed_demo
      generates the multi-object synthetic set (DAVIS-2017 layout, instance ids) into
      <workdir>/data/synthetic_multi, scores the untrained block, trains this config (no labels: the semantic
      and motion losses of the block's attention), scores the trained block on the held-out synthetic 'val'
      videos (DAVIS-2017 J&F with the official matching, FG-ARI / mIoU) and prints both.
  python main.py --mode=train --config=configs/betrayed_demo.py --workdir=DIR    (the training part alone)

Small everything: the 'patch_projection' encoder (a fixed random linear map of 4x4 RGB patches to 96
features stands in for the frozen ViT), 48x64 frames -> 12x16 tokens, 4 heads, clips of 3 frames with the
released sampling and augmentation, keys every 4th frame (the videos have 8 to 12 frames), the released
losses (semantic ranks 15 / 100 for the smaller grid) and clustering, a higher learning rate than released. Numbers measured are in docs/betrayed.md.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('betrayed')
  m = config.model
  m.encoder = 'patch_projection'
  m.projection_patch = 4
  m.projection_dim = 64
  m.heads = 4
  m.image_size = (48, 64)
  m.eval_size = (48, 64)
  m.sem_top = 15  # 12x16 = 192 tokens per frame: the released 30 / 200 ranks scaled down
  m.sem_bottom = 100
  m.key_ratio = 4
  m.log_eps = 1e-12

  d = config.data
  d.train = 'synthetic_multi'
  d.val = ''  # self-supervised: no model selection during training; the demo scores the last checkpoint
  d.test = 'synthetic_multi'
  d.clip_half_window = 1
  d.clip_stride = 2
  d.clip_fit = 'shrink'
  d.clip_size = (48, 64)
  d.clip_borders = False
  d.clip_antialias = False
  d.clip_augment = 'betrayed'
  d.prefetch = 2
  d.num_parallel_calls = 2
  d.synthetic_multi.update(num_train_videos=24, num_val_videos=6, num_frames=(8, 12), frame_sizes=((64, 96),),
                           num_objects=(2, 3), letterbox=0.0, flat_colours=True, flow=False, seed=0)

  t = config.train
  t.batch_size = 8
  t.num_train_steps = 200
  t.schedule = 'cosine'
  t.learning_rate = 1e-3
  t.end_learning_rate = 1e-4
  t.weight_decay = 0.1
  t.weight_decay_mask = 'matrices'
  t.log_every_steps = 25
  t.eval_every_steps = 10_000
  t.checkpoint_every_steps = 100
  t.write_images_every_steps = 10_000
  t.keep_checkpoints = 2

  e = config.eval
  e.protocol = 'davis17'
  e.batch_size = 8
  return config

"""The SOLV CPU demo: a small SOLV trained without labels on multi-object synthetic videos, then scored.

  python main.py --mode=demo --config=configs/solv_demo.py --workdir=workdirs/solv_demo
      generates the multi-object synthetic set (DAVIS-2017 layout, instance ids) into
      <workdir>/data/synthetic_multi, scores the untrained model, trains this config (no labels: the
      reconstruction of the centre frame's encoder features), scores the trained model on the held-out
      synthetic 'val' videos with the correct FG-ARI / mIoU (gsa_jax.multi_object_fgari) and prints both.
  python main.py --mode=train --config=configs/solv_demo.py --workdir=DIR    (the training part alone)

Small everything: the 'patch_projection' encoder (a fixed random linear map of 8x8 RGB patches to 48
features stands in for the frozen ViT), flat-coloured synthetic objects, 64x96 frames -> 8x12 tokens, 4 slots
of 64, decoder width 256, clips
of 5 frames as released, merging with the released log-epoch schedule over 10 'epochs', the released
warm-up + halvings schedule at a higher peak learning rate. Numbers measured are in docs/solv.md.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('solv')
  m = config.model
  m.encoder = 'patch_projection'
  m.projection_patch = 8
  m.projection_dim = 48
  m.image_size = (64, 96)
  m.num_slots = 4  # background + up to 3 objects
  m.slot_dim = 64
  m.temporal_heads = 4
  m.temporal_ffn = 256
  m.decoder_hidden = 256
  m.merge_epochs = 10

  d = config.data
  d.train = 'synthetic_multi'
  d.val = ''  # self-supervised: no model selection during training; the demo scores the last checkpoint
  d.test = 'synthetic_multi'
  d.clip_size = (64, 96)
  d.clip_borders = True
  d.prefetch = 2
  d.num_parallel_calls = 2
  d.synthetic_multi.update(num_train_videos=24, num_val_videos=6, num_frames=(8, 12), frame_sizes=((64, 96),),
                           num_objects=(2, 3), letterbox=0.0, flat_colours=True, flow=False,
                           seed=0)

  t = config.train
  t.batch_size = 8
  t.num_train_steps = 800
  t.num_epochs = 10
  t.schedule = 'warmup_halvings'
  t.learning_rate = 2e-3
  t.grad_clip_norm = 1.0
  t.log_every_steps = 25
  t.eval_every_steps = 10_000
  t.checkpoint_every_steps = 200
  t.write_images_every_steps = 10_000
  t.keep_checkpoints = 2

  e = config.eval
  e.protocol = 'fgari_miou'
  e.batch_size = 8
  return config

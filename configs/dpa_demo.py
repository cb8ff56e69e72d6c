"""The CPU demo of DPA: a small DPA video model trained on generated synthetic videos, then scored on held-out ones.

  python main.py --mode=demo --config=configs/dpa_demo.py --workdir=workdirs/dpa_demo
      generates the synthetic set into <workdir>/data/synthetic (or data.synthetic_root), trains this
      config, evaluates the best checkpoint (by validation G on the synthetic VAL videos) on the held-out
      synthetic TEST videos and prints J, F and G. Writes <workdir>/eval/test/{results.json, results.csv,
      results_per_sequence.png, masks/, overlays/}, TensorBoard logs and checkpoints.
      Same data and step budget as configs/gsanet_demo.py (96 training videos, 1500 steps of batch 8).
      Measured on a shared 2-core CPU under a load average of 6-12 from other jobs (this run got 48 % of
      the CPU): test G 0.867 (J 0.839, F 0.894) on the 10 held-out test videos (best checkpoint 1500, val G
      0.788), 34 min in all (data 16 s, train 1992 s incl. compilation, evaluate 25 s). GSA-Net's demo
      reports G 0.820 on the same data and steps (on an idle CPU, 7 min 39 s).
  python main.py --mode=train --config=configs/dpa_demo.py --workdir=DIR      (the training part alone)
  python main.py --mode=evaluate --config=configs/dpa_demo.py --workdir=DIR   (the evaluation part alone)

The released architecture (two VGG-16 streams, IFA at conv5 with N_R references, COMP + ASPP, RGB + flow
fusion, the gated decoder, the soft-Jaccard IoU loss) with small sizes: VGG-16 at a quarter of its channels,
the decoder at half of its widths (its full-resolution 96-channel conv is most of the FLOPs of a small model),
hidden width 32, 64x64 images without multi-scale training, N_R = 2. There are no ImageNet weights at this
width, so convs start Kaiming-normal (model.conv_init='kaiming'): the official N(0, 0.01) init of 13 stacked
VGG convs leaves almost no signal at conv5 when nothing overwrites it.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('dpa')
  m = config.model
  m.kind = 'video'
  m.vgg_width = 0.25
  m.decoder_width = 0.5
  m.dim = 32
  m.conv_init = 'kaiming'
  m.loss = 'iou'

  d = config.data
  d.train = d.val = d.test = 'synthetic'
  d.num_refs = 2
  d.image_size = 64
  d.multiscale_sizes = ()
  d.shuffle_buffer = 256
  d.prefetch = 2
  d.num_parallel_calls = 2
  d.synthetic.update(num_train_videos=96, num_val_videos=4, num_test_videos=10, num_frames=12, image_size=64,
                     difficulty=0.5, num_images=200, seed=0)

  t = config.train
  t.batch_size = 8
  t.num_train_steps = 1500
  t.learning_rate = 1e-3
  t.end_learning_rate = 1e-4
  t.warmup_steps = 20
  t.log_every_steps = 25
  t.eval_every_steps = 500
  t.checkpoint_every_steps = 500
  t.write_images_every_steps = 500
  t.keep_checkpoints = 2

  e = config.eval
  e.batch_size = 12
  e.protocol = 'davis16'
  return config

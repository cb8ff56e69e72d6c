"""The CPU demo: a small GSA-Net trained on generated synthetic videos, then scored on held-out ones.

  python main.py --mode=demo --workdir=workdirs/demo
      generates the synthetic set into <workdir>/data/synthetic (or data.synthetic_root), trains this
      config, evaluates the best checkpoint (by validation G on the synthetic VAL videos) on the held-out
      synthetic TEST videos and prints J, F and G. Writes <workdir>/eval/test/{results.json, results.csv,
      results_per_sequence.png, masks/, overlays/}, TensorBoard logs and checkpoints.
      Measured on an otherwise idle 2-core CPU: test G 0.820 (J 0.804, F 0.837) on the 10 held-out test
      videos, 7 min 39 s in all (data 15 s, train 429 s incl. compilation, evaluate 8 s). With 24 training
      videos instead of 96 it reached only G 0.751 (validation G plateaued at 0.70-0.73, also with 4500
      steps): the limit was the amount of training data, not the steps.
  python main.py --mode=train --config=configs/gsanet_demo.py --workdir=DIR     (the training part alone)
  python main.py --mode=evaluate --config=configs/gsanet_demo.py --workdir=DIR  (the evaluation part alone)

Small everything: the tiny_cnn backbone, working width 32, 64x64 images without multi-scale training,
N_R = 2 reference frames, 16 k-means clusters. The slot branch, FAT, KNN and both streams are all on
(the full model of Table 2 row (f)); only the sizes are small.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('gsanet')
  m = config.model
  m.backbone = 'tiny_cnn'
  m.drop_path_rate = 0.0
  m.dim = 32
  m.num_clusters = 16
  m.knn_k = 4
  m.kmeans_iters = 5
  m.fat_dropout = 0.1

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
  t.learning_rate = 2e-3
  t.end_learning_rate = 1e-4
  t.warmup_steps = 20
  config.model.loss = 'f3net'  # Converges faster than the official double-sigmoid loss at this size.
  t.log_every_steps = 25
  t.eval_every_steps = 500
  t.checkpoint_every_steps = 500
  t.write_images_every_steps = 500
  t.keep_checkpoints = 2

  e = config.eval
  e.batch_size = 12
  e.protocol = 'davis16'
  return config

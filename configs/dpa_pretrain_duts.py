"""Stage 1 as the official pretrain.py (reference §5.1): the RGB-only DPA saliency model on DUTS.

  python main.py --mode=convert --source=vgg16.pth --kind=vgg16 --output=data/pretrained/vgg16
      (torchvision's vgg16(weights='IMAGENET1K_V1').state_dict(), or DPA's prefix-less vgg16_feat.pth)
  python main.py --mode=train --config=configs/dpa_pretrain_duts.py --workdir=workdirs/dpa_pretrain_duts \
      --config.data.train_root=data/DUTS-TR --config.train.init_from=data/pretrained/vgg16
  python main.py --mode=summary --config=configs/dpa_pretrain_duts.py
      -> last line `total_params: 20139300` (the official 20,205,862 minus the never-used PCG.out / GAN.fc).

VGG-16 (ImageNet weights into rgb_encoder) -> DAM4 refining conv4 before conv5, DAM5 on conv5 (prototypes
+ the graph network: non-local block and three EdgeConv layers, k = 10) -> COMP4/5/6 + ASPP -> the decoder;
the soft-Jaccard IoU loss on the 4 side maps; batch 12; 200 epochs; Adam 1e-4 with a per-iteration cosine
down to 1e-5; multi-scale training 384..512, test size 512. Produces <workdir>/checkpoints/<step>/ for stage 2
(configs/dpa_davis.py with --config.train.init_from=<this workdir>: every rgb_* weight also goes to its
flow_* twin, the official load_my_state_dict rule; IFA and the RGB + flow fusion start fresh).
The paper pretrains on DUTS train AND test: put both in train_root to follow it. The official code picks its
best epoch on the DAVIS-16 test frames; here data.val is empty and the last checkpoint is the result.
"""

from configs import defaults


def get_config():
  config = defaults.get_config('dpa')
  config.model.kind = 'saliency'
  config.model.loss = 'iou'

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
  t.batch_size = 12
  t.num_epochs = 200
  t.num_train_steps = -1
  t.learning_rate = 1e-4
  t.end_learning_rate = 1e-5
  t.warmup_steps = 0
  t.init_from = 'data/pretrained/vgg16'
  return config

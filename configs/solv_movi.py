"""SOLV on MOVi-E as the paper describes it (§4.1; the released code has no MOVi code): 18 slots, 336x336.

  python main.py --mode=train --config=configs/solv_movi.py --workdir=DIR \\
      --config.data.train_root=/data/movi_e_davis --config.train.init_from=weights/dinov2_vitb14
      from scratch, 60 epochs, batch 48, the released optimiser and schedule, merge threshold 0.12.
  python main.py --mode=summary --config=configs/solv_movi.py     trained_params: 5763401.

Data: MOVi-E frames and instance masks in the DAVIS-2017 layout (JPEGImages/480p/<video>/*,
Annotations_unsupervised/480p/<video>/*.png, ImageSets/2017/{train,val}.txt), data set name 'davis17'. A
locally prepared MOVi-E TFDS directory is exported to it (no download) by
  python -m input_pipeline.movi --tfds_dir=<data_dir>/movi_e/128x128/1.0.0 --output=/data/movi_e_davis
The paper scores FG-ARI per frame, averaged over all frames (eval.protocol='fgari_miou', the default
measures; paper Table 1: FG-ARI 80.8).
"""

from configs import solv_ytvis


def get_config():
  config = solv_ytvis.get_config()
  config.model.num_slots = 18
  config.model.image_size = (336, 336)
  config.model.merge_threshold = 0.12
  d = config.data
  d.train = d.test = 'davis17'
  d.clip_size = (336, 336)
  d.clip_borders = False  # MOVi renders have no letterbox
  config.train.num_epochs = 60
  return config

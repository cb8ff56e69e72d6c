"""GSA-Net (Guided Slot Attention, CVPR 2024): the two-stream video model and its stage-1 saliency variant."""

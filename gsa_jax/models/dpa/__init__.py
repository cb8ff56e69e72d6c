"""DPA (Dual Prototype Attention, CVPR 2024): the two-stream VGG-16 video model and its stage-1 saliency model."""

"""Betrayed by Attention (ECCV 2024): self-supervised video object segmentation from DINO attention."""

"""Flax modules of GSA-Net: backbones, MFFM, slot generator, FAT, guided slot attention, decoders."""

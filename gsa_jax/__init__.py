"""GSA-Net in JAX/Flax."""

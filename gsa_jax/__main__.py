"""`python -m gsa_jax --mode=... [flags]`: the same command line as `gsa-jax` and main.py (gsa_jax/cli.py)."""

from gsa_jax import cli

if __name__ == '__main__':
  cli.run()

"""gsa-jax entry point: `python main.py --mode=... [flags]`, the same as `gsa-jax` and `python -m gsa_jax`.

  python main.py --mode=train    --config=configs/gsanet_demo.py --workdir=DIR [--config.x.y=v ...]
  python main.py --mode=evaluate --config=configs/gsanet_demo.py --workdir=DIR [--checkpoint=DIR]
  python main.py --mode=evaluate --predictions=DIR --ground_truth=DIR --protocol=davis16 --output=DIR
  python main.py --mode=summary  --config=configs/gsanet_davis_mitb2.py
  python main.py --mode=flow     --input=VIDEO_OR_FOLDER --output=DIR [--flow_method=dis] [--overwrite]
  python main.py --mode=predict  --checkpoint=DIR --input=VIDEO_OR_FOLDER --output=DIR
  python main.py --mode=convert  --source=FILE --kind=mit|resnet|gsanet --output=DIR
  python main.py --mode=generate --output=DIR [--config=configs/gsanet_demo.py]
  python main.py --mode=demo     --workdir=DIR

The flags and modes are in gsa_jax/cli.py (`python main.py --help`).
"""

from gsa_jax import cli

if __name__ == '__main__':
  cli.run()

"""Helpers of the trainer tests: tiny configs over the real synthetic data, and a tiny registered model.

The mechanism tests (devices, processes, kill/resume, NaN, shape mismatch) exercise the trainer, not the
network, so they may use the model 'tiny_video' (TinyVideoNet: GSA-Net's call API in a few convolutions, with
BatchNorm, dropout and a k-means-key dependence), registered here through the public registry like any model
family: `tiny_config(root, model=TINY)`. The real GSANet compiles for minutes on a 2-core CPU;
test_train.py and test_contract.py run it end to end.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax import registry
from gsa_jax.models.gsanet import model as gsanet_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Stream(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(self.dim, (3, 3), strides=(2, 2), name='conv')(x)
    x = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_running_average=not train, name='bn')(x)
    return nn.relu(x)


class TinyVideoNet(nn.Module):
  """GSANet's API (encode_references / segment / __call__) in a few layers."""
  dim: int = 8

  def setup(self):
    self.rgb_encoder = _Stream(self.dim)
    self.flow_encoder = _Stream(self.dim)
    self.rgb_mffm1 = nn.Dense(self.dim)
    self.flow_mffm1 = nn.Dense(self.dim)
    self.decoder = nn.Dense(1)
    self.dropout = nn.Dropout(0.2)

  def encode_references(self, ref_rgb, ref_flow, *, train=False):
    return {'rgb': jax.lax.stop_gradient(jnp.mean(ref_rgb, axis=(1, 2, 3))),
            'flow': jax.lax.stop_gradient(jnp.mean(ref_flow, axis=(1, 2, 3)))}

  def segment(self, rgb, flow, ref_features, *, train, kmeans_key):
    b, h, w, _ = rgb.shape
    x = self.rgb_mffm1(self.rgb_encoder(rgb, train)) + self.flow_mffm1(self.flow_encoder(flow, train))
    x = self.dropout(x, deterministic=not train)
    x = x + 0.01 * jax.random.normal(kmeans_key, (b, 1, 1, 1)) + 0.1 * ref_features['rgb'][:, None, None, :1]
    logits = jax.image.resize(self.decoder(x), (b, h, w, 1), 'bilinear')
    slot = jax.nn.sigmoid(logits)
    return {'logits': logits, 'side_logits': (logits,) * 4, 'slot_maps': (slot,) * 6}

  def __call__(self, rgb, flow, ref_rgb, ref_flow, *, train, kmeans_key):
    return self.segment(rgb, flow, self.encode_references(ref_rgb, ref_flow), train=train, kmeans_key=kmeans_key)


TINY = 'tiny_video'


@registry.register
class TinyVideoModel(gsanet_model.GSANetModel):
  """GSA-Net's family (loss, data, inference, transfer) over TinyVideoNet."""
  name = TINY
  description = 'a tiny stand-in for GSA-Net in the trainer tests'

  @classmethod
  def model_config(cls):
    config = super().model_config()
    config.name = TINY
    return config

  def build(self):
    return TinyVideoNet(dim=int(self.config.model.dim))


def tiny_config(synthetic_root: str, *, steps: int = 6, batch: int = 4, dim: int = 8, model: str = 'gsanet'):
  """The demo config shrunk: 64 px, 2 refs, a small synthetic set, no validation, a checkpoint every 2.

  model=TINY trains TinyVideoNet instead of the real GSA-Net."""
  from configs import gsanet_demo as demo
  c = demo.get_config()
  if model != 'gsanet':
    fields = c.model.to_dict()
    c.model = registry.get(model).model_config()
    c.model.update({k: v for k, v in fields.items() if k != 'name'})
  c.model.dim = dim
  c.data.synthetic_root = synthetic_root
  c.data.synthetic.update(num_train_videos=3, num_val_videos=2, num_test_videos=2, num_frames=5, image_size=64,
                          num_images=8)
  c.data.val = ''
  c.data.shuffle_buffer = 16
  c.data.num_parallel_calls = 1
  c.train.batch_size = batch
  c.train.num_train_steps = steps
  c.train.warmup_steps = 0
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.eval_every_steps = 1000
  c.train.write_images_every_steps = 1000
  c.train.keep_checkpoints = 2
  c.eval.batch_size = 4
  return c


def ensure_synthetic(root: str) -> None:
  from input_pipeline import data_sources
  data_sources.ensure_synthetic(tiny_config(root).data.synthetic, root)


def run_python(code: str, *, env_extra=None, timeout=600, check=True):
  """Runs `code` in a fresh interpreter at the repository root; returns the CompletedProcess."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, 'tests'))
  env.pop('XLA_FLAGS', None)
  env.update(env_extra or {})
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')
  return proc

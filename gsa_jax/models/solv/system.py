"""The whole SOLV system: the frozen encoder and the trained SOLV network, as one Flax module.

  SOLVVideo(settings, encoder_name=..., kept_tokens=...)
    .train_forward(frames, frame_mask, token_key=, merge_key=, merge_prob=)  the released training step's
        forward: target = encoder(centre frame, all tokens); features = encoder(every frame, a random subset of
        kept_tokens tokens per frame, dropped before the blocks); SOLV on those -> (outputs, target).
    .encode(images)                         images [b, h, w, 3] -> all-token features [b, n, c] (evaluation).
    .bind(features, token_indices, frame_mask, train=, merge_key=, merge_prob=)   SOLV (network.SOLV) alone.
    .window_bind(video_features, num_frames, frame_indices)   the released evaluation of some frames of a
        video: for frame i the window i-N..i+N of the video's all-token features (frames outside the video
        masked), SOLV in evaluation mode, merging always on -> SOLV's output dict.
  Shapes: frames [b, F, h, w, 3] ImageNet-normalised, frame_mask [b, F] bool (False: padding outside the
  video), F = 2N + 1, n = (h / p) (w / p) tokens.

Param tree: encoder (frozen, see encoder.py), solv/{spatial_binder, temporal_binder, decoder} (trained, see
network.py). The encoder's output is under stop_gradient: no gradient reaches it or flows through it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gsa_jax.models.solv import config as config_lib
from gsa_jax.models.solv import encoder as encoder_lib
from gsa_jax.models.solv import network


def window_indices(num_frames: jnp.ndarray, frame_indices: jnp.ndarray, half_window: int
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Frames i-N..i+N of each frame i: (indices clipped into the video [b, F], valid [b, F] bool)."""
  offsets = jnp.arange(-half_window, half_window + 1)
  index = frame_indices[:, None] + offsets[None, :]                                   # [b F]
  valid = (index >= 0) & (index < num_frames)
  return jnp.clip(index, 0, jnp.maximum(num_frames - 1, 0)), valid


class SOLVVideo(nn.Module):
  """Encoder + SOLV (module doc)."""
  settings: config_lib.Settings
  encoder_name: str = 'dinov2_vitb14'
  encoder_dtype: str = 'float32'
  projection_patch: int = 8
  projection_dim: int = 64
  kept_tokens: int = 432

  def setup(self):
    self.encoder = encoder_lib.Encoder(self.encoder_name, dtype=config_lib.DTYPES[self.encoder_dtype],
                                       projection_patch=self.projection_patch, projection_dim=self.projection_dim)
    self.solv = network.SOLV(self.settings)

  def encode(self, images: jnp.ndarray) -> jnp.ndarray:
    """[b, h, w, 3] -> [b, n, c] float32 features of every token."""
    return self.encoder(images)

  def bind(self, features: jnp.ndarray, token_indices: jnp.ndarray, frame_mask: jnp.ndarray, *, train: bool,
           merge_key: jax.Array | None = None, merge_prob: Any = 1.0) -> dict[str, jnp.ndarray]:
    return self.solv(features, token_indices, frame_mask, train=train, merge_key=merge_key, merge_prob=merge_prob)

  def train_forward(self, frames: jnp.ndarray, frame_mask: jnp.ndarray, *, token_key: jax.Array,
                    merge_key: jax.Array | None, merge_prob: Any) -> tuple[dict[str, jnp.ndarray], jnp.ndarray]:
    s = self.settings
    b, f, h, w, _ = frames.shape
    if f != s.num_frames:
      raise ValueError(f'SOLV clips must have F = 2N + 1 = {s.num_frames} frames (model.half_window='
                       f'{s.half_window}); got frames of shape {tuple(frames.shape)}.')
    n = s.num_tokens
    target = self.encoder(frames[:, s.half_window])                             # [b n c]
    flat = frames.reshape(b * f, h, w, 3)
    kept = min(self.kept_tokens, n)
    token_indices = encoder_lib.sample_kept_tokens(token_key, b * f, n, kept)          # [bF n']
    features = self.encoder(flat, keep=token_indices if kept < n else None)     # [bF n' c]
    outputs = self.solv(features, token_indices, frame_mask.astype(bool), train=True, merge_key=merge_key,
                        merge_prob=merge_prob)
    return outputs, target

  def window_bind(self, video_features: jnp.ndarray, num_frames: jnp.ndarray,
                  frame_indices: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """video_features [T, n, c] (rows >= num_frames unused), frame_indices [b] -> SOLV outputs of b windows."""
    s = self.settings
    index, valid = window_indices(num_frames, frame_indices, s.half_window)          # [b F]
    b, f = index.shape
    features = video_features[index] * valid[..., None, None].astype(video_features.dtype)   # [b F n c]
    n = video_features.shape[1]
    tokens = network.full_token_indices(b * f, n)
    return self.solv(features.reshape(b * f, n, -1), tokens, valid, train=False, merge_prob=1.0)

  def __call__(self, images: jnp.ndarray, features: jnp.ndarray, token_indices: jnp.ndarray,
               frame_mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Initialisation: the encoder on `images`, SOLV on `features` (shapes as example inputs)."""
    self.encoder(images)
    return self.solv(features, token_indices, frame_mask, train=False, merge_prob=0.0)


def build(model: Any) -> SOLVVideo:
  """The SOLVVideo of a (valid) model section."""
  settings = config_lib.settings_from_model(model)
  return SOLVVideo(settings, encoder_name=model.encoder, encoder_dtype=model.encoder_dtype,
                   projection_patch=int(model.projection_patch), projection_dim=int(model.projection_dim),
                   kept_tokens=encoder_lib.kept_token_count(settings.num_tokens, float(model.token_drop_ratio)))


def init_variables(module: SOLVVideo, key: jax.Array) -> dict[str, Any]:
  """Random variables as released (the temporal layers identical when so set); the encoder random too."""
  s = module.settings
  p = module.projection_patch if module.encoder_name == config_lib.PATCH_PROJECTION else None
  if p is None:
    from gsa_jax.backbones import vit as vit_lib  # pylint: disable=g-import-not-at-top
    p = vit_lib.get_config(module.encoder_name).patch_size
  images = jnp.zeros((1, p, p, 3), jnp.float32)
  inputs = network.example_inputs(s, batch=1, kept=min(4, s.num_tokens))
  variables = module.init({'params': key}, images, **inputs)
  params = dict(variables['params'])
  if s.identical_temporal_init:
    params['solv'] = network.tie_temporal_layers(params['solv'])
  return {'params': params}

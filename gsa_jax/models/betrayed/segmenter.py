"""Betrayed by Attention's inference on a video: the clustering of attention rows, as the released evaluation.

  BetrayedSegmenter(model, variables, batch_size=)     the segmenter of gsa_jax.inference (one inference path)
    input_hw             model.eval_size: the frames go in at (height, width) (released 320x480).
    context_indices(t)   every frame (model.last_frame='copy': all but the last, as the released loader).
    encode({'rgb': [t, h, w, 3]})  ImageNet-normalised frames -> the whole video's clustering, run once:
        the encoder's keys per frame (batches of batch_size), the block's LN1 + qkv, the sparse keys of
        frames 0, r, 2r, ... (model.key_ratio), head-mean attention rows of windows of model.window query
        frames, the hierarchical symmetric-KL clustering at model.tau (cluster.cluster_video). Frames are
        first re-normalised with the Kinetics mean / std (model.eval_normalisation='kinetics', released).
    segment(inputs, frame_indices, context) -> the given frames' maps, made once by encode (their pixels
    are not read again):
        'ids'   [b, gh, gw] int32  (model.output='instances') cluster + 1 for every token: every cluster,
                                   background included, is one object id, as released; model.max_instances > 0
                                   keeps that many of the largest clusters, the others 0;
        'prob'  [b, gh, gw] float32 (model.output='foreground') 1 on the foreground tokens: clusters at
                                   model.foreground_tau, all but the background cluster (model.foreground_rule).
        Frame numbers >= t (the padding of a last batch) get zeros.
    frame_ids(outputs, h, w)  one frame's ids at its own size by nearest neighbour with source index
                              floor(dst * in / out) (the released evaluator's F.interpolate 'nearest').

The clustering is deterministic (no sampling), so two runs give the same masks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gsa_jax import inference
from gsa_jax.models.betrayed import cluster as cluster_lib
from gsa_jax.models.betrayed import config as config_lib
from input_pipeline import frames as frames_lib


@dataclasses.dataclass
class VideoContext:
  """One video's clustering: labels [t, gh * gw] per token, the number of clusters, and the output map of
  every frame it predicts, `maps` [t', gh, gw] (ids or foreground; t' = t + 1 when the last frame copies)."""
  labels: np.ndarray
  num_clusters: int
  num_frames: int
  maps: np.ndarray
  seconds: dict[str, float]


def keep_largest(labels: np.ndarray, count: int) -> np.ndarray:
  """Cluster labels [t, n] (0..K-1) -> ids [t, n] int32: 1..count for the `count` largest clusters (by tokens
  over the video, ties by label), 0 for the rest; count 0 keeps every cluster (label + 1)."""
  if count <= 0:
    return labels.astype(np.int32) + 1
  sizes = np.bincount(labels.ravel())
  order = np.lexsort((np.arange(sizes.size), -sizes))[:count]
  table = np.zeros(sizes.size, np.int32)
  table[order] = np.arange(1, order.size + 1, dtype=np.int32)
  return table[labels]


class BetrayedSegmenter(inference.ProgramCache, inference.Segmenter):
  """The compiled inference of a Betrayed-by-Attention model (module doc)."""

  def __init__(self, model: Any, variables: Mapping[str, Any], *, batch_size: int):
    m = model.config.model
    self.model = model
    self.m = m
    self.output_kind = 'binary' if m.output == 'foreground' else 'instances'
    self.input_hw = tuple(int(v) for v in m.eval_size)
    self.size = self.input_hw[0]
    self.grid = config_lib.token_grid(m, self.input_hw)
    self.batch_size = int(batch_size)
    self.modalities = ('rgb',)
    self.compile_seconds = 0.0
    self.set_variables(variables)

  def describe(self) -> dict[str, Any]:
    m = self.m
    return dict(super().describe(), input_hw=list(self.input_hw), token_grid=list(self.grid), output=m.output,
                tau=float(m.foreground_tau if m.output == 'foreground' else m.tau), key_ratio=int(m.key_ratio),
                window=int(m.window), cluster_algorithm=m.cluster_algorithm, log_eps=float(m.log_eps),
                last_frame=m.last_frame, eval_normalisation=m.eval_normalisation)

  def set_variables(self, variables: Mapping[str, Any]) -> None:
    self.variables = jax.device_put({'params': variables['params']})

  def context_indices(self, num_frames: int) -> list[int]:
    if self.m.last_frame == 'copy' and num_frames > 1:
      return list(range(num_frames - 1))
    return list(range(num_frames))

  def _keys_fn(self, variables, images):
    if self.m.eval_normalisation == 'kinetics':  # ImageNet-normalised -> [0, 1] -> Kinetics-normalised
      rgb = images * jnp.asarray(frames_lib.IMAGENET_STD, jnp.float32) + jnp.asarray(frames_lib.IMAGENET_MEAN,
                                                                                       jnp.float32)
      images = (rgb - jnp.asarray(config_lib.KINETICS_MEAN)) / jnp.asarray(config_lib.KINETICS_STD)
    module = self.model.module
    keys = module.apply(variables, images, method='encode')                     # [b n c]
    return module.apply(variables, keys, method='query_keys')                   # q, k [b heads n d]

  def encode(self, context: Mapping[str, np.ndarray]) -> VideoContext:
    images = np.asarray(context['rgb'], np.float32)
    t = images.shape[0]
    if t == 0:
      raise cluster_lib.ClusteringError('Betrayed by Attention: a video needs at least one frame.')
    if images.shape[1:3] != self.input_hw:
      raise ValueError(f'BetrayedSegmenter.encode: frames are {images.shape[1]}x{images.shape[2]}; expected '
                       f'model.eval_size {self.input_hw[0]}x{self.input_hw[1]}.')
    seconds = {}
    start_time = time.perf_counter()
    qs, ks = [], []
    for start in range(0, t, self.batch_size):
      chunk = images[start:start + self.batch_size]
      count = chunk.shape[0]
      if count < self.batch_size:  # the same program for the last chunk
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - count, axis=0)])
      q, k = self._program('keys', self._keys_fn, self.variables, jnp.asarray(chunk))
      qs.append(q[:count])
      ks.append(k[:count])
    q, k = jnp.concatenate(qs), jnp.concatenate(ks)
    jax.block_until_ready(q)
    seconds['keys'] = time.perf_counter() - start_time
    m = self.m
    sparse = cluster_lib.sparse_key_frames(t, int(m.key_ratio))
    tau = float(m.foreground_tau if m.output == 'foreground' else m.tau)
    start_time = time.perf_counter()
    result = cluster_lib.cluster_video(q, k[jnp.asarray(sparse)], scale=float(q.shape[-1]) ** -0.5, tau=tau,
                                       window=int(m.window), algorithm=m.cluster_algorithm,
                                       log_eps=float(m.log_eps))
    seconds['cluster'] = time.perf_counter() - start_time
    labels = np.asarray(result.labels)
    gh, gw = self.grid
    if self.output_kind == 'binary':
      from gsa_jax.models.betrayed import foreground as foreground_lib  # pylint: disable=g-import-not-at-top
      maps = foreground_lib.foreground_mask(labels, (gh, gw), rule=m.foreground_rule).astype(np.float32)
    else:
      maps = keep_largest(labels, int(m.max_instances)).reshape(t, gh, gw)
    if m.last_frame == 'copy':  # the released copy of frame L - 2 for the dropped last frame
      maps = np.concatenate([maps, maps[-1:]])
    return VideoContext(labels=labels, num_clusters=int(result.num_clusters), num_frames=t, maps=maps,
                        seconds=seconds)

  def segment(self, inputs, frame_indices, context: VideoContext, *, extras=False):
    del inputs, extras
    indices = np.asarray(frame_indices, np.int64)
    out = np.zeros((indices.size,) + context.maps.shape[1:], context.maps.dtype)
    known = indices < context.maps.shape[0]
    out[known] = context.maps[indices[known]]
    return {'prob' if self.output_kind == 'binary' else 'ids': out}

  def frame_ids(self, outputs: Mapping[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """Ids [gh, gw] -> [height, width] with source index floor(dst * in / out) (torch 'nearest')."""
    ids = np.asarray(outputs['ids'])
    rows = np.minimum((np.arange(height) * ids.shape[0]) // height, ids.shape[0] - 1)
    cols = np.minimum((np.arange(width) * ids.shape[1]) // width, ids.shape[1] - 1)
    return ids[rows[:, None], cols[None, :]].astype(np.int32)

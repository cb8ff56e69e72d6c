"""Speed of Betrayed by Attention's test-time clustering (gsa_jax.models.betrayed.cluster.cluster_video).

  python -m gsa_jax.bench.betrayed --frames 20 --height 320 --width 480 [--structured] [--json OUT]
      [--key_ratio 10] [--tau 1.0] [--groups 3] [--seed 0]

The inputs are what the released inference feeds the clustering for a video of `frames` frames of
height x width pixels under DINO ViT-S/8: q [T, 8, (height / 8) (width / 8), 48] and the keys k = q at the
sparse key frames 0, key_ratio, 2 key_ratio, ... (`sparse_key_frames`), scale 48^-0.5.
  random (default): q ~ Normal(0, 0.5^2), seed `seed`: near-uniform attention rows, one cluster.
  --structured: `groups` token groups (every head's query is a group centre of unit norm times 8, plus
    Normal(0, 0.3^2) noise; a random arrangement of the groups in every frame), so K = groups clusters.
Timed: the first call of cluster_video (compilation of the attention rows included) and a second call, wall
clock; the second call's split by stage (attention rows, neighbourhood averaging, the windows' greedy
passes, the video-level passes, the assignment) from cluster_video's `timings`. Printed as one JSON object
(K, seconds, the machine's load average before and after), also written to --json when given.

Users: the clustering's speed checks (tests/test_bench_betrayed.py runs it at a tiny size) and anyone sizing
the clustering for a video length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from gsa_jax import errors

PATCH = 8          # DINO ViT-S/8: one token per 8 x 8 pixels
HEADS = 8          # the spatio-temporal block's heads
HEAD_DIM = 48      # 384 / 8
RANDOM_STD = 0.5
PEAK, NOISE = 8.0, 0.3


class BenchError(errors.UserError):
  """A benchmark size the clustering cannot take; the message names the flag and the fix."""


def make_inputs(frames: int, height: int, width: int, *, structured: bool = False, groups: int = 3,
                key_ratio: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """q [T, 8, N, 48], k at the sparse key frames [T', 8, N, 48] (float32), and the group of every token [T, N]
  (None for random inputs); N = (height / 8) (width / 8)."""
  from gsa_jax.models.betrayed import cluster  # pylint: disable=g-import-not-at-top
  for name, value in (('--height', height), ('--width', width)):
    if value < PATCH or value % PATCH:
      raise BenchError(f'{name} {value}: must be a positive multiple of {PATCH} pixels (the ViT-S/8 patch).')
  if frames < 1:
    raise BenchError(f'--frames {frames}: must be >= 1.')
  if key_ratio < 1 or frames < key_ratio:
    raise BenchError(f'--key_ratio {key_ratio} with --frames {frames}: the key frames are 0, key_ratio, ... '
                     f'below floor(frames / key_ratio) * key_ratio; pass 1 <= --key_ratio <= {frames}.')
  if structured and groups < 1:
    raise BenchError(f'--groups {groups}: must be >= 1.')
  n = (height // PATCH) * (width // PATCH)
  rng = np.random.default_rng(seed)
  group = None
  if structured:
    centres = rng.standard_normal((groups, HEADS, HEAD_DIM))
    centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
    group = np.stack([rng.permutation(np.arange(n) % groups) for _ in range(frames)])        # [T, N]
    q = np.empty((frames, HEADS, n, HEAD_DIM), np.float32)
    for t in range(frames):                                                                     # [h, N, d] a frame
      tokens = PEAK * centres[group[t]] + NOISE * rng.standard_normal((n, HEADS, HEAD_DIM))    # [N, h, d]
      q[t] = np.transpose(tokens, (1, 0, 2))
  else:
    q = (RANDOM_STD * rng.standard_normal((frames, HEADS, n, HEAD_DIM))).astype(np.float32)
  k = q[cluster.sparse_key_frames(frames, key_ratio)]
  return q, k, group


def run(frames: int, height: int, width: int, *, structured: bool = False, groups: int = 3, key_ratio: int = 10,
        tau: float = 1.0, seed: int = 0) -> dict[str, Any]:
  """Builds the inputs, times two calls of cluster_video; the result dict that main prints."""
  from gsa_jax.models.betrayed import cluster  # pylint: disable=g-import-not-at-top
  q, k, group = make_inputs(frames, height, width, structured=structured, groups=groups, key_ratio=key_ratio,
                            seed=seed)
  scale = HEAD_DIM ** -0.5
  load_start = list(os.getloadavg())
  t0 = time.perf_counter()
  first = cluster.cluster_video(q, k, scale=scale, tau=tau)
  first_s = time.perf_counter() - t0
  stages: dict[str, float] = {}
  t0 = time.perf_counter()
  second = cluster.cluster_video(q, k, scale=scale, tau=tau, timings=stages)
  second_s = time.perf_counter() - t0
  result = dict(
      case='structured' if structured else 'random', frames=frames, height=height, width=width,
      tokens_per_frame=q.shape[2], key_frames=int(k.shape[0]), tau=tau, seed=seed,
      groups=groups if structured else None,
      num_clusters=second.num_clusters, first_call_s=round(first_s, 3), second_call_s=round(second_s, 3),
      stages_s={name: round(s, 3) for name, s in stages.items()},
      labels_repeat=bool(np.array_equal(first.labels, second.labels)),
      load_average_start=load_start, load_average_end=list(os.getloadavg()), cpu_count=os.cpu_count())
  if group is not None:
    result['purity'] = round(_purity(second.labels, group), 4)
  return result


def _purity(labels: np.ndarray, group: np.ndarray) -> float:
  """The share of tokens in their cluster's majority group."""
  total = sum(int(np.bincount(group[labels == c]).max()) for c in np.unique(labels))
  return total / labels.size


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m gsa_jax.bench.betrayed', description=__doc__.split('\n\n')[0])
  parser.add_argument('--frames', type=int, default=20, help='video length T')
  parser.add_argument('--height', type=int, default=320, help='frame height in pixels (multiple of 8)')
  parser.add_argument('--width', type=int, default=480, help='frame width in pixels (multiple of 8)')
  parser.add_argument('--structured', action='store_true', help='token groups (K = --groups) instead of noise')
  parser.add_argument('--groups', type=int, default=3, help='token groups of --structured')
  parser.add_argument('--key_ratio', type=int, default=10, help='key-frame stride (the released 10)')
  parser.add_argument('--tau', type=float, default=1.0, help='merge threshold in symmetric KL')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default='', help='also write the result to this JSON file')
  return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parser().parse_args(argv)
  result = run(args.frames, args.height, args.width, structured=args.structured, groups=args.groups,
               key_ratio=args.key_ratio, tau=args.tau, seed=args.seed)
  text = json.dumps(result, indent=2)
  print(text)
  if args.json:
    with open(args.json, 'w') as f:
      f.write(text + '\n')
  return result


if __name__ == '__main__':
  try:
    main()
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

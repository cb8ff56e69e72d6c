"""Slot ids across the frames of a video (host side, numpy / scipy), as SOLV's released evaluation.

Each frame of a video has K_t merged slots (rows 0..K_t-1 of SOLV's output). Frame 0's slot k gets id k.
For t >= 1, the cosine similarity (each vector divided by its norm + 1e-8) between frame t-1's K_{t-1}
slots and frame t's K_t slots is matched by `scipy.optimize.linear_sum_assignment` (maximum total
similarity); a matched slot of frame t takes its partner's id. When K_t > K_{t-1} some slots of frame t stay
unmatched:
  'released'    each takes the id of its most similar slot of frame t-1 (argmax), so no id is ever created
                after frame 0 and a video has at most K_0 distinct ids;
  'new_tracks'  each opens a new id (the next unused one).
Without merging the released evaluation does no tracking (`Tracker(enabled=False)`): slot k keeps id k.

  Tracker(rule, enabled).update(slots [K, D]) -> ids [K] int64 (0-based); call once per frame, in order.
  cosine_similarity(a [m, D], b [k, D]) -> [m, k].
"""

import numpy as np
from scipy import optimize

from gsa_jax.models.solv import config as config_lib


def cosine_similarity(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """Released pairwise_cos_sim: a / (|a| + eps) . b / (|b| + eps), float64."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a = a / (np.linalg.norm(a, axis=1) + eps)[:, None]
  b = b / (np.linalg.norm(b, axis=1) + eps)[:, None]
  return a @ b.T


class Tracker:
  """Ids of the merged slots of consecutive frames of one video (module doc)."""

  def __init__(self, rule: str = 'released', enabled: bool = True):
    if rule not in config_lib.TRACKING_RULES:
      raise ValueError(f'Unknown tracking rule {rule!r} (model.tracking); choose one of '
                       f'{config_lib.TRACKING_RULES}.')
    self.rule = rule
    self.enabled = enabled
    self.previous: np.ndarray | None = None  # frame t-1's slots [K, D]
    self.previous_ids: np.ndarray | None = None
    self.next_id = 0
    self.frames = 0

  def update(self, slots: np.ndarray) -> np.ndarray:
    """The ids [K] (0-based) of this frame's K merged slots [K, D]."""
    slots = np.asarray(slots)
    k = slots.shape[0]
    self.frames += 1
    if not self.enabled or self.previous is None:
      ids = np.arange(k, dtype=np.int64)
    else:
      similarity = cosine_similarity(self.previous, slots)                         # [K_prev K]
      rows, cols = optimize.linear_sum_assignment(-similarity)
      ids = np.full(k, -1, np.int64)
      ids[cols] = self.previous_ids[rows]
      for j in np.flatnonzero(ids < 0):  # only when K > K_prev
        if self.rule == 'released':
          ids[j] = self.previous_ids[int(np.argmax(similarity[:, j]))]
        else:
          ids[j] = self.next_id
          self.next_id += 1
    self.next_id = max(self.next_id, int(ids.max()) + 1 if k else 0)
    self.previous, self.previous_ids = slots, ids
    return ids

"""Small file helpers shared by every output writer: JSON-safe values and all-or-nothing file writes."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np


def jsonable(value: Any) -> Any:
  """`value` with ConfigDicts, tuples, numpy scalars / arrays made JSON types; NaN and inf become None."""
  if hasattr(value, 'to_dict') and callable(value.to_dict):  # ml_collections.ConfigDict
    return jsonable(value.to_dict())
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def atomic_write(path: str, write: Callable[[Any], None], *, binary: bool = False) -> None:
  """Writes `path` through a temporary file in the same folder and os.replace, so it is never partial."""
  directory, name = os.path.split(os.path.abspath(path))
  # A unique name opened with 'x' (not mkstemp, whose 0600 mode would survive the rename).
  tmp = os.path.join(directory, f'.{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
  try:
    with open(tmp, 'xb' if binary else 'x', **({} if binary else {'newline': '', 'encoding': 'utf-8'})) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, value: Any) -> None:
  """`value` as indented JSON at `path`, atomically."""
  document = jsonable(value)
  atomic_write(path, lambda f: json.dump(document, f, indent=2, allow_nan=False))

"""Reading PyTorch / safetensors weights safely, and the layout rules shared by every converter.

  read_state_dict(source)   a .safetensors / .bin / .pth / .pt file (or a folder holding
                            model.safetensors or pytorch_model.bin) -> {key: numpy array}. PyTorch
                            pickles are read with `torch.load(weights_only=True)`: no code in the file runs.
  convert_tree(...)         fills an abstract Flax variable tree from a state dict through a key map,
                            or raises one ValueError listing every missing, unexpected or mis-shaped key.
  to_flax / torch_shape     PyTorch <-> Flax layouts of one leaf (conv OIHW <-> HWIO, Linear transposed).
  rename_rule               'a.{i}.b.' -> 'c.{i}.' as a regular-expression substitution.
The per-family key maps live next to their modules (gsa_jax/backbones/*, gsa_jax/models/<name>/).
"""

import os
import re
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np

from gsa_jax import errors

StateDict = dict[str, np.ndarray]
Variables = dict[str, Any]

# Files looked for, in this order, when `source` is a folder.
_CHECKPOINT_FILES = ('model.safetensors', 'pytorch_model.bin')
_TORCH_SUFFIXES = ('.bin', '.pth', '.pt')


# ------------------------------------------------------------------------------------------------
# Reading checkpoints.
# ------------------------------------------------------------------------------------------------

def resolve_source(source: str) -> str:
  """Returns the checkpoint file of `source` (a file, or a folder holding one of _CHECKPOINT_FILES)."""
  if os.path.isdir(source):
    for name in _CHECKPOINT_FILES:
      path = os.path.join(source, name)
      if os.path.isfile(path):
        return path
    raise ValueError(f'{source!r} is a folder without {" or ".join(_CHECKPOINT_FILES)}.')
  if not os.path.isfile(source):
    raise ValueError(f'Checkpoint {source!r} does not exist.')
  return source


def _unreadable(path: str, e: Exception, what: str) -> errors.UserError:
  # The first line of the library's message only: torch appends advice to retry with weights_only=False,
  # which would run any code in the file; that is never an option here.
  first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return errors.UserError(f'{path} cannot be read as {what} ({type(e).__name__}: {first[:200]}). It is damaged, or '
                          'holds objects other than tensors (only plain state dicts are read, without running any '
                          'code in the file). Re-save the weights alone, e.g. torch.save(model.state_dict(), PATH).')


def read_state_dict(source: str, *, safe_globals: Sequence[Any] = ()) -> StateDict:
  """Reads a safetensors or PyTorch checkpoint into {key: float32/int numpy array}.

  PyTorch files are read with torch.load(weights_only=True): tensors and plain containers only; `safe_globals`
  allow-lists a few more types (e.g. argparse.Namespace in training checkpoints). A file that is damaged or
  holds anything else gives one error naming it.
  """
  path = resolve_source(source)
  if path.endswith('.safetensors'):
    from safetensors import safe_open
    state = {}
    try:
      with safe_open(path, framework='numpy') as f:
        for key in f.keys():
          state[key] = f.get_tensor(key)
    except Exception as e:  # pylint: disable=broad-except
      raise _unreadable(path, e, 'a safetensors file') from e
    return state
  if path.endswith(_TORCH_SUFFIXES):
    import pickle  # pylint: disable=g-import-not-at-top
    import torch  # Only needed for PyTorch pickles.
    try:
      with torch.serialization.safe_globals(list(safe_globals)):
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
      raise _unreadable(path, e, 'a PyTorch state dict') from e
    # Training checkpoints often nest the weights (the official GSA-Net ones under 'model_state_dict').
    for wrapper in ('model_state_dict', 'state_dict', 'model'):
      if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
        loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
      raise ValueError(f'{path!r} does not hold a state dict (got {type(loaded).__name__}).')
    state = {}
    for key, value in loaded.items():
      if isinstance(value, torch.Tensor):
        if value.is_floating_point():
          value = value.float()
        state[key] = value.numpy()
    return state
  raise ValueError(f'Unsupported checkpoint file {path!r}: expected .safetensors, .bin, .pth or .pt.')


# ------------------------------------------------------------------------------------------------
# Name and layout maps, shared by the backbone converters.
# ------------------------------------------------------------------------------------------------

def to_flax(torch_value: np.ndarray, leaf: str) -> np.ndarray:
  """PyTorch layout -> Flax layout for one leaf (kernels transposed, everything else as is)."""
  if leaf == 'kernel' and torch_value.ndim == 4:
    return np.transpose(torch_value, (2, 3, 1, 0))  # [o i kh kw] -> [kh kw i o]
  if leaf == 'kernel' and torch_value.ndim == 2:
    return torch_value.T  # [o i] -> [i o]
  return torch_value


def torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  """The PyTorch shape that `_to_flax` turns into `flax_shape`."""
  if leaf == 'kernel' and len(flax_shape) == 4:
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if leaf == 'kernel' and len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


# Flax leaf name -> PyTorch parameter / buffer name.
LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}


def convert_tree(state: StateDict, abstract: Variables, torch_key: Callable[[tuple[str, ...]], str],
                  ignored: Callable[[str], bool], what: str,
                  extra_dims: Callable[[tuple[str, ...]], int] = lambda names: 0) -> Variables:
  """Fills the abstract variable tree of a backbone from `state`, or raises listing every mismatch.

  Args:
    state: the checkpoint, with normalised key names.
    abstract: `jax.eval_shape` of the module's init ({'params': ..., maybe 'batch_stats': ...}).
    torch_key: maps a Flax path (module names..., leaf) to the checkpoint key.
    ignored: checkpoint keys that are allowed to be left over (classifier heads, counters).
    what: the variant name, for messages.
    extra_dims: how many trailing size-1 axes the PyTorch tensor of a leaf has beyond the layout of
      `_torch_shape` (1 for a Conv1d(k=1) read as a Dense kernel, 2 for a 1x1 Conv2d read as one).
  """
  problems: list[str] = []
  used: set[str] = set()

  def fill(path, leaf_abstract):
    names = tuple(p.key for p in path[1:])  # Drop the collection name.
    key = torch_key(names)
    leaf = names[-1]
    expected = torch_shape(leaf_abstract.shape, leaf) + (1,) * extra_dims(names)
    if key not in state:
      problems.append(f'missing key {key}: expected shape {expected}')
      return None
    used.add(key)
    value = state[key]
    if tuple(value.shape) != expected:
      problems.append(f'wrong shape {key}: checkpoint {tuple(value.shape)}, expected {expected}')
      return None
    value = value.reshape(torch_shape(leaf_abstract.shape, leaf))  # Drops the extra size-1 axes.
    return np.asarray(to_flax(value, leaf), dtype=leaf_abstract.dtype)

  tree = jax.tree_util.tree_map_with_path(fill, abstract)
  for key in sorted(set(state) - used):
    if not ignored(key):
      problems.append(f'unexpected key {key}: shape {tuple(state[key].shape)}')
  if problems:
    raise ValueError(f'The checkpoint does not match {what} ({len(problems)} problems):\n  '
                     + '\n  '.join(problems))
  return tree


def rename_rule(source: str, target: str) -> tuple[str, str]:
  """('a.{i}.b.', 'c.{i}.') -> (regex, replacement) for re.sub."""
  src, dst = re.split(r'\{(\w)\}', source), re.split(r'\{(\w)\}', target)
  pattern = ''.join(re.escape(p) if k % 2 == 0 else rf'(?P<{p}>\d+)' for k, p in enumerate(src))
  replacement = ''.join(p if k % 2 == 0 else rf'\g<{p}>' for k, p in enumerate(dst))
  return ('' if source.startswith('.') else '^') + pattern, replacement



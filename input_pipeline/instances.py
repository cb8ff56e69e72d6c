"""Instance-id masks: reading, writing, colours, and the DAVIS-2017 / YouTube-VIS video listers.

An instance-id mask is an [h, w] array of integer ids: 0 background, 1.. objects (or proposals), and in
DAVIS ground truth 255 = void. On disk it is a palette PNG whose pixel values are the ids (the palette is
only for display), or a grey 8/16-bit PNG holding the ids.

  read_instance_mask(path)               ids [h, w] (uint8 / uint16 / int32) from a palette, grey or colour PNG.
  write_instance_mask(path, ids)         a palette PNG with the DAVIS palette (ids 0..255).
  davis_palette(n)                       [n, 3] uint8, the DAVIS / PASCAL VOC colour of each id.
  object_colours(ids)                    [len(ids), 3] uint8 colours for overlays (any number of ids).
  colourise(ids), overlay(rgb, ids)      [h, w, 3] uint8 pictures.
  InstanceMaskFolder(root)               sequence → frame → ids, read lazily (for gsa_jax.multi_object).
  list_davis17(root, split)              DAVIS-2017 videos (JPEGImages/480p, Annotations_unsupervised/480p,
                                         ImageSets/2017 or 2019).
  list_youtube_vis(root, split)          YouTube-VIS style videos (JPEGImages/<video>, Annotations/<video>).
  ground_truth(records)                  sequence → frame → ids of the annotated frames of these records.

Records (`InstanceVideoRecord`) carry name, frame_paths, mask_paths (None where a frame has no mask),
frame_names, flow_paths (empty when there is no FLOW folder) and multi_object=True: masks hold instance
ids, not one foreground. Errors are `input_pipeline.images.DataError` and name the file and the fix.
"""

import dataclasses
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from input_pipeline import images as image_io
from input_pipeline.images import DataError

VOID_LABEL = 255
PALETTE_SIZE = 256
DAVIS17_SPLITS = ('train', 'val', 'test-dev', 'test-challenge')
RESOLUTIONS = ('480p', 'Full-Resolution', '1080p')
_ID_FIX = ('Instance masks must be palette PNGs (pixel value = id) or grey PNGs holding the ids; re-export it '
           'losslessly, e.g. with input_pipeline.instances.write_instance_mask(path, ids).')


# ------------------------------------------------------------------------------------------------
# Colours.


def davis_palette(n: int = PALETTE_SIZE) -> np.ndarray:
  """[n, 3] uint8: the DAVIS (PASCAL VOC) colour map; id i's colour spreads the bits of i over R, G, B.

  Bit 3j of i sets bit 7-j of red, bit 3j+1 of green, bit 3j+2 of blue (j = 0, 1, ...): 0 black,
  1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), 4 (0, 0, 128), ... Ids above 255 continue the pattern.
  """
  ids = np.arange(n, dtype=np.int64)
  colours = np.zeros((n, 3), np.int64)
  for j in range(8):
    for channel in range(3):
      bit = (ids >> (3 * j + channel)) & 1
      colours[:, channel] |= bit << (7 - j)
  return colours.astype(np.uint8)


def object_colours(ids: Sequence[int] | np.ndarray) -> np.ndarray:
  """[len(ids), 3] uint8 display colours: the DAVIS palette for ids 0..255 (0 black), and above that a
  fixed colour hashed from the id (distinct from black), so any number of proposals can be drawn."""
  ids = np.asarray(ids, dtype=np.int64).reshape(-1)
  if ids.size and ids.min() < 0:
    raise DataError(f'object_colours: negative id {int(ids.min())}; ids are >= 0.')
  out = np.zeros((ids.size, 3), np.uint8)
  small = ids < PALETTE_SIZE
  out[small] = davis_palette()[ids[small]]
  if (~small).any():
    h = (ids[~small].astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2 ** 24)
    rgb = np.stack([(h >> np.uint64(16)) & np.uint64(255), (h >> np.uint64(8)) & np.uint64(255),
                    h & np.uint64(255)], axis=-1).astype(np.int64)
    out[~small] = np.maximum(rgb, 32).astype(np.uint8)
  return out


def colourise(ids: np.ndarray) -> np.ndarray:
  """[h, w, 3] uint8: each pixel in its id's colour (`object_colours`); void (255) in its palette colour."""
  ids = np.asarray(ids)
  unique, inverse = np.unique(ids, return_inverse=True)
  return object_colours(unique)[inverse.reshape(ids.shape)]


def overlay(rgb: np.ndarray, ids: np.ndarray, alpha: float = 0.5, *, background: int = 0) -> np.ndarray:
  """[h, w, 3] uint8: rgb with every non-background pixel blended with its id's colour (weight alpha)."""
  rgb = np.asarray(rgb)
  ids = np.asarray(ids)
  if rgb.shape[:2] != ids.shape or rgb.ndim != 3:
    raise DataError(f'overlay: the image {rgb.shape} and the id map {ids.shape} differ in size.')
  colours = colourise(ids).astype(np.float32)
  mixed = (1 - alpha) * rgb[..., :3].astype(np.float32) + alpha * colours
  out = np.where((ids != background)[..., None], mixed, rgb[..., :3].astype(np.float32))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Reading and writing id masks.


def read_instance_mask(path: str) -> np.ndarray:
  """Ids [h, w] of an instance mask file.

  Palette PNG: the pixel values (indices) are the ids, whatever the palette. Grey 8/16-bit PNG: the
  values. A colour PNG is accepted when every colour is a DAVIS palette colour (an id map saved in
  RGB); any other colour image, and lossy files (JPEG), are an error naming the file.
  """
  if path.lower().endswith(('.jpg', '.jpeg')):
    raise DataError(f'{path}: a JPEG cannot hold instance ids (lossy compression changes them). ' + _ID_FIX)
  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      array = np.asarray(im)
  except FileNotFoundError as e:
    raise DataError(f'{path}: the mask file does not exist.') from e
  except Exception as e:  # PIL raises several types for bad files.
    raise DataError(f'{path}: cannot decode the mask ({e}). The file is corrupt or not an image; ' + _ID_FIX) from e
  if mode in ('P', 'L'):
    return np.array(array, np.uint8)
  if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    array = np.array(array, np.int64)
    if array.min() < 0:
      raise DataError(f'{path}: negative values in a 32-bit mask; ids are >= 0. ' + _ID_FIX)
    return array.astype(np.uint16 if array.max() < 2 ** 16 else np.int32)
  if mode == 'LA':
    return np.array(array[..., 0], np.uint8)
  if mode in ('RGB', 'RGBA'):
    rgb = array[..., :3]
    if np.all(rgb == rgb[..., :1]):
      return np.array(rgb[..., 0], np.uint8)
    return _ids_from_palette_colours(path, rgb)
  raise DataError(f'{path}: unsupported image mode {mode!r} for an instance mask. ' + _ID_FIX)


def _ids_from_palette_colours(path: str, rgb: np.ndarray) -> np.ndarray:
  codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
  palette = davis_palette().astype(np.int64)
  palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
  unique, inverse = np.unique(codes, return_inverse=True)
  lookup = {int(c): i for i, c in enumerate(palette_codes)}
  unknown = [int(c) for c in unique if int(c) not in lookup]
  if unknown:
    shown = ', '.join(f'({c >> 16}, {(c >> 8) & 255}, {c & 255})' for c in unknown[:4])
    raise DataError(f'{path}: colour mask with {len(unknown)} colour(s) outside the DAVIS palette ({shown}'
                    f'{", ..." if len(unknown) > 4 else ""}), so its ids cannot be recovered. ' + _ID_FIX)
  ids = np.array([lookup[int(c)] for c in unique], np.uint8)
  return ids[inverse.reshape(codes.shape)]


def write_instance_mask(path: str, ids: np.ndarray) -> None:
  """Writes ids [h, w] (integers 0..255) as a palette PNG with the DAVIS palette (atomically).

  Raises DataError naming the file for ids outside 0..255 or non-integer / non-2-D input.
  """
  array = np.asarray(ids)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise DataError(f'{path}: an instance mask is [h, w] ids; got shape {array.shape}.')
  if array.dtype == bool:
    array = array.astype(np.uint8)
  if not np.issubdtype(array.dtype, np.integer):
    if not np.issubdtype(array.dtype, np.floating) or np.any(array != np.round(array)):
      raise DataError(f'{path}: instance ids must be integers; got dtype {array.dtype} with fractional values.')
  if array.size and (array.min() < 0 or array.max() >= PALETTE_SIZE):
    raise DataError(
        f'{path}: ids {int(array.min())}..{int(array.max())} do not fit a palette PNG (ids 0..{PALETTE_SIZE - 1}). '
        'Relabel to at most 255 ids, e.g. `np.unique(ids, return_inverse=True)[1]`, or keep fewer proposals '
        '(DAVIS-2017 allows 20).')
  image = Image.fromarray(array.astype(np.uint8), mode='P')
  image.putpalette(davis_palette().reshape(-1).tolist())
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{name}.{uuid.uuid4().hex[:8]}.tmp')
  try:
    image.save(tmp, format='PNG')
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


class _LazyFrames(Mapping):
  """frame name → ids, read from disk on access."""

  def __init__(self, paths: dict[str, str]):
    self._paths = paths

  def __getitem__(self, frame: str) -> np.ndarray:
    return read_instance_mask(self._paths[frame])

  def __contains__(self, frame: object) -> bool:
    return frame in self._paths

  def __iter__(self) -> Iterator[str]:
    return iter(self._paths)

  def __len__(self) -> int:
    return len(self._paths)

  def describe(self, frame: str) -> str:
    return self._paths.get(frame, f'<no file for frame {frame}>')


class InstanceMaskFolder(Mapping):
  """sequence → (frame → ids [h, w]) over `<root>/<sequence>/<frame>.png`, read lazily.

  Sequences are the sub-folders holding .png files (one level, or two for class/shot names).
  """

  def __init__(self, root: str, *, role: str = 'masks'):
    if not os.path.isdir(root):
      raise DataError(f'The {role} folder {root} does not exist.')
    self.root = root
    self._sequences: dict[str, dict[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames.sort()
      pngs = sorted((f for f in filenames if f.lower().endswith('.png') and not f.startswith('.')),
                    key=image_io.natural_key)
      rel = os.path.relpath(dirpath, root)
      if pngs and rel != '.':
        self._sequences[rel.replace(os.sep, '/')] = {os.path.splitext(f)[0]: os.path.join(dirpath, f) for f in pngs}
    if not self._sequences:
      raise DataError(f'The {role} folder {root} holds no <sequence>/<frame>.png masks.')

  def __getitem__(self, seq: str) -> _LazyFrames:
    return _LazyFrames(self._sequences[seq])

  def __contains__(self, seq: object) -> bool:
    return seq in self._sequences

  def __iter__(self) -> Iterator[str]:
    return iter(self._sequences)

  def __len__(self) -> int:
    return len(self._sequences)


# ------------------------------------------------------------------------------------------------
# Video records and listers.


@dataclasses.dataclass(frozen=True)
class InstanceVideoRecord:
  """One video with instance-id masks. Lists are aligned; mask_paths[i] is None where frame i has no mask."""
  name: str
  frame_paths: Sequence[str]
  mask_paths: Sequence[str | None]
  frame_names: Sequence[str] = ()
  flow_paths: Sequence[str] = ()  # empty: no optical flow on disk
  multi_object: bool = True

  def __post_init__(self):
    if not self.frame_names:
      object.__setattr__(self, 'frame_names', tuple(image_io.stem(p) for p in self.frame_paths))

  def __len__(self) -> int:
    return len(self.frame_paths)

  @property
  def annotated(self) -> list[int]:
    return [i for i, m in enumerate(self.mask_paths) if m is not None]


def ground_truth(records: Sequence[InstanceVideoRecord]) -> dict[str, Mapping[str, np.ndarray]]:
  """sequence → frame name → ids (read lazily) of the annotated frames of `records`."""
  return {r.name: _LazyFrames({r.frame_names[i]: r.mask_paths[i] for i in r.annotated}) for r in records}


def _frames_in(folder: str) -> list[str]:
  return [p for p in image_io.list_image_files(folder) if not p.lower().endswith('.png')] or \
      image_io.list_image_files(folder)


def _pair_video(name: str, frames_dir: str, masks_dir: str | None, flow_dir: str | None) -> InstanceVideoRecord:
  frames = _frames_in(frames_dir)
  if not frames:
    raise DataError(f'{frames_dir}: no frames (.jpg) of video {name!r}.')
  stems = [image_io.stem(p) for p in frames]
  if len(set(stems)) != len(stems):
    raise DataError(f'{frames_dir}: two frames share a name (e.g. .jpg and .png of one frame); keep one.')
  masks: dict[str, str] = {}
  if masks_dir is not None and os.path.isdir(masks_dir):
    for m in image_io.list_image_files(masks_dir, ('.png',)):
      s = image_io.stem(m)
      if s not in stems:
        raise DataError(f'{m}: a mask with no frame of the same name ({s}.jpg) in {frames_dir}. Frame and mask '
                        'names must agree; rename or remove it.')
      masks[s] = m
  flows: tuple[str, ...] = ()
  if flow_dir is not None and os.path.isdir(flow_dir):
    by_stem = {image_io.stem(f): f for f in image_io.list_image_files(flow_dir)}
    if by_stem:
      missing = [s for s in stems if s not in by_stem]
      if missing == stems[-1:] and len(stems) > 1:  # no flow for the last frame: reuse the previous one
        by_stem[stems[-1]] = by_stem[stems[-2]]
      elif missing:
        raise DataError(f'{flow_dir}: {len(missing)} of {len(stems)} frames of {name!r} have no flow image (first: '
                        f'{missing[0]}). Re-run `python main.py --mode=flow --input={frames_dir} --output={flow_dir}`.')
      flows = tuple(by_stem[s] for s in stems)
  return InstanceVideoRecord(name=name, frame_paths=tuple(frames), mask_paths=tuple(masks.get(s) for s in stems),
                             frame_names=tuple(stems), flow_paths=flows)


def check_instance_record(record: InstanceVideoRecord, *, check: str = 'first') -> None:
  """Frame and mask sizes agree and masks decode as ids: on the first annotated frame, 'all', or 'none'."""
  if check == 'none':
    return
  if check not in ('first', 'all'):
    raise DataError(f"check must be 'first', 'all' or 'none'; got {check!r}.")
  indices = record.annotated if check == 'all' else record.annotated[:1]
  for i in indices:
    size = image_io.image_size(record.frame_paths[i])
    ids = read_instance_mask(record.mask_paths[i])
    if ids.shape != size:
      raise DataError(f'{record.mask_paths[i]}: the mask is {ids.shape[0]}x{ids.shape[1]} (h x w) but its frame '
                      f'{record.frame_paths[i]} is {size[0]}x{size[1]}. Resize the mask with nearest neighbour or '
                      're-make it from these frames.')


def _split_names(path: str) -> list[str]:
  names = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line and line not in names:
        names.append(line)
  return names


def list_davis17(root: str, split: str = 'val', *, task: str = 'unsupervised', resolution: str = '480p',
                 check: str = 'first') -> list[InstanceVideoRecord]:
  """DAVIS-2017 videos of `split` ('train' | 'val' | 'test-dev' | 'test-challenge', or None for every folder).

  root holds JPEGImages/<resolution>/<seq>/*.jpg, Annotations_unsupervised/<resolution>/<seq>/*.png
  (task 'unsupervised') or Annotations/<resolution>/... ('semi-supervised'), and ImageSets/2017/<split>.txt
  (ImageSets/2019 for the unsupervised test sets, as the official tool). FLOW/<resolution>/<seq> is used
  when present. Test sets may have no masks (mask_paths None).
  """
  if task not in ('unsupervised', 'semi-supervised'):
    raise DataError(f"task must be 'unsupervised' or 'semi-supervised'; got {task!r}.")
  if split is not None and split not in DAVIS17_SPLITS:
    raise DataError(f'Unknown DAVIS-2017 split {split!r}; choose one of {", ".join(DAVIS17_SPLITS)} (or None).')
  if not os.path.isdir(root):
    raise DataError(f'The DAVIS-2017 folder {root} does not exist.')
  frames_root = os.path.join(root, 'JPEGImages', resolution)
  if not os.path.isdir(frames_root):
    raise DataError(f'{frames_root}: missing. Expected {root}/JPEGImages/{resolution}/<sequence>/<frame>.jpg '
                    f'(resolution is one of {", ".join(RESOLUTIONS)} or any folder name).')
  annotations = 'Annotations_unsupervised' if task == 'unsupervised' else 'Annotations'
  masks_root = os.path.join(root, annotations, resolution)
  if split in (None, 'train', 'val') and not os.path.isdir(masks_root):
    raise DataError(f'{masks_root}: the {task} annotations are missing (the {task} task reads {annotations}/).')
  if split is None:
    names = sorted((n for n in os.listdir(frames_root) if os.path.isdir(os.path.join(frames_root, n))),
                   key=image_io.natural_key)
  else:
    year = '2019' if task == 'unsupervised' and split.startswith('test') else '2017'
    split_file = os.path.join(root, 'ImageSets', year, f'{split}.txt')
    if not os.path.isfile(split_file):
      raise DataError(f'{split_file}: the sequence list of split {split!r} is missing; add it (one sequence name per '
                      'line) or pass split=None to list every sequence folder.')
    names = _split_names(split_file)
  flow_root = os.path.join(root, 'FLOW', resolution)
  records = []
  for name in names:
    frames_dir = os.path.join(frames_root, name)
    if not os.path.isdir(frames_dir):
      raise DataError(f'{frames_dir}: sequence {name!r} of the split list has no frame folder.')
    records.append(_pair_video(name, frames_dir, os.path.join(masks_root, name), os.path.join(flow_root, name)))
  if not records:
    raise DataError(f'{root}: no DAVIS-2017 sequences listed for split {split!r}.')
  for r in records:
    check_instance_record(r, check=check)
  return records


def read_youtube_vis_names(json_path: str) -> list[str]:
  """Video folder names, in file order, from a YouTube-VIS annotation json (videos[*].file_names[0])."""
  try:
    with open(json_path) as f:
      videos = json.load(f)['videos']
    return [v['file_names'][0].split('/')[0] for v in videos]
  except FileNotFoundError as e:
    raise DataError(f'{json_path}: the YouTube-VIS json does not exist.') from e
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise DataError(f'{json_path}: not a YouTube-VIS annotation json (needs videos[*].file_names): {e}.') from e


def list_youtube_vis(root: str, split: str | None = None, *, videos: Sequence[str] | None = None,
                     check: str = 'first') -> list[InstanceVideoRecord]:
  """YouTube-VIS style videos: <root>[/<split>]/JPEGImages/<video>/*.jpg, Annotations/<video>/*.png.

  `videos` restricts (and orders) the list, e.g. `read_youtube_vis_names(json)[600:900]`. Frames without
  a mask have mask_paths None; a split without Annotations/ has no masks at all.
  """
  folder = os.path.join(root, split) if split else root
  frames_root = os.path.join(folder, 'JPEGImages')
  if not os.path.isdir(frames_root):
    raise DataError(f'{frames_root}: missing. Expected {folder}/JPEGImages/<video>/<frame>.jpg and '
                    f'{folder}/Annotations/<video>/<frame>.png.')
  names = sorted((n for n in os.listdir(frames_root) if os.path.isdir(os.path.join(frames_root, n))
                  and not n.startswith('.')), key=image_io.natural_key)
  if videos is not None:
    unknown = [v for v in videos if v not in set(names)]
    if unknown:
      raise DataError(f'{frames_root}: no frame folder for {len(unknown)} requested video(s): '
                      f'{", ".join(unknown[:5])}{" ..." if len(unknown) > 5 else ""}.')
    names = list(videos)
  if not names:
    raise DataError(f'{frames_root}: no video folders.')
  masks_root = os.path.join(folder, 'Annotations')
  flow_root = os.path.join(folder, 'FLOW')
  records = [_pair_video(n, os.path.join(frames_root, n), os.path.join(masks_root, n), os.path.join(flow_root, n))
             for n in names]
  for r in records:
    check_instance_record(r, check=check)
  return records

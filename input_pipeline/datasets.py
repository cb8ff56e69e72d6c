"""Readers for the video and still-image data sets: one record per video (or image), checked on load.

Video data sets (`list_videos(name, root, split)`): 'synthetic', 'davis16', 'youtubevos', 'fbms', 'ytobj'.
Image data sets (`list_images(name, root, split)`): 'duts', 'synthetic_images'.
docs/data.md gives each layout and how to get there from the official downloads. Summary:

  flat (official GSANet)  <dir>/{RGB,GT,FLOW}/<video>_<frame>.{jpg,png}   (video = name before the LAST '_')
  nested official test    <dir>/<video>/{RGB,GT,FLOW}/<video>_<frame>.*
  original (per video)    <dir>/JPEGImages[/480p]/<video>/<frame>.jpg, Annotations[/480p]/<video>/<frame>.png,
                          FLOW[/480p]/<video>/<frame>.jpg   (<video> may be two levels: class/shot)

Checks on load (DataError naming the file and the fix): frames exist; every mask and every flow has a
frame of the same name; each frame has a flow (a video whose flows stop one frame short reuses the
previous flow for its last frame, as predict.py does); dense data sets (synthetic, davis16) have a mask
on every frame; sparse ones (fbms, ytobj, youtubevos) score only annotated frames. Then, with
check='all' (the default, `data.check`): for every frame, frame, mask and flow sizes agree (read from
the image headers, nothing decoded), no JPEG or PNG is truncated (its end marker is there), and every
mask follows the rule in images.py (binary or palette; merged multi-object only where the data set has
them; single-object data sets refuse a third grey level); check='first' checks the first annotated frame
of each video only, check='none' nothing. Every problem found is listed in one error. A missing FLOW
folder names the command that makes it.
"""

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Sequence

from input_pipeline import images as image_io
from input_pipeline.images import DataError

VIDEO_DATASETS = ('synthetic', 'davis16', 'youtubevos', 'fbms', 'ytobj')
IMAGE_DATASETS = ('duts', 'synthetic_images')
DENSE = ('synthetic', 'davis16')  # every frame annotated
MULTI_OBJECT = ('youtubevos', 'fbms', 'ytobj')  # masks may hold several objects: merged into one
_FLAT_SPLIT_FOLDERS = {  # official GSANet folder names, tried under root when a split is asked for
    'davis16': {'train': ('DAVIS_train',), 'val': ('DAVIS_test', 'DAVIS_val'), 'test': ('DAVIS_test',)},
    'youtubevos': {'train': ('YTVOS_train',)},
    'fbms': {'train': ('FBMS_train', 'Trainingset'), 'test': ('FBMS_test', 'Testset'), 'val': ('FBMS_test', 'Testset')},
    'ytobj': {'test': ('YTObj_test',)},
    'duts': {'train': ('DUTS_train', 'DUTS-TR')},
}


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video. Lists are aligned; mask_paths[i] is None where frame i has no annotation."""
  name: str
  frame_paths: Sequence[str]
  flow_paths: Sequence[str]
  mask_paths: Sequence[str | None]
  frame_names: Sequence[str] = ()  # frame ids without the video prefix ('00000'); stems by default

  def __post_init__(self):
    if not self.frame_names:
      object.__setattr__(self, 'frame_names', tuple(image_io.stem(p) for p in self.frame_paths))

  def __len__(self) -> int:
    return len(self.frame_paths)

  @property
  def annotated(self) -> list[int]:
    return [i for i, m in enumerate(self.mask_paths) if m is not None]


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  name: str
  image_path: str
  mask_path: str


def flow_command(frames: str, output: str) -> str:
  """The command that (re-)makes the flow of `frames` in `output`, runnable as printed."""
  overwrite = ' --overwrite' if os.path.exists(output) else ''
  return f'python main.py --mode=flow --input={frames} --output={output}{overwrite}'


# ------------------------------------------------------------------------------------------------
# Pairing frames, masks and flows of one video.


def _pair(name: str, frames: list[str], masks: list[str], flows: list[str] | None, *, dense: bool, frame_names,
          flow_hint: tuple[str, str]) -> VideoRecord:
  if not frames:
    raise DataError(f'Video {name!r}: no frames.')
  by_stem = {image_io.stem(p): p for p in frames}
  if len(by_stem) != len(frames):
    raise DataError(f'Video {name!r}: two frames share a name (e.g. .jpg and .png of one frame) in '
                    f'{os.path.dirname(frames[0])}; keep one.')
  mask_by_stem = {}
  for m in masks:
    s = image_io.stem(m)
    if s not in by_stem:
      raise DataError(f'{m}: a mask with no frame of the same name ({s}.*) in {os.path.dirname(frames[0])}. '
                      'Frame and mask names must agree; rename or remove it.')
    mask_by_stem[s] = m
  stems = [image_io.stem(p) for p in frames]
  if dense:
    missing = [s for s in stems if s not in mask_by_stem]
    if missing:
      raise DataError(f'Video {name!r}: {len(missing)} of {len(stems)} frames have no mask (first: {missing[0]}; '
                      f'masks are {len(masks)}). Every frame of this data set must be annotated: add the missing '
                      'masks or remove those frames.')
  if flows is None:
    raise DataError(f'Video {name!r}: no optical flow. Make it with `{flow_command(*flow_hint)}`.')
  flow_by_stem = {}
  for f in flows:
    s = image_io.stem(f)
    if s not in by_stem:
      raise DataError(f'{f}: a flow image with no frame of the same name ({s}.*). Flow names must be the '
                      f'frame names; re-run `{flow_command(*flow_hint)}`.')
    flow_by_stem[s] = f
  missing = [s for s in stems if s not in flow_by_stem]
  if missing == stems[-1:] and len(stems) > 1:  # RAFT-style: no flow for the last frame
    flow_by_stem[stems[-1]] = flow_by_stem[stems[-2]]
  elif missing:
    raise DataError(f'Video {name!r}: {len(missing)} of {len(stems)} frames have no flow image (first: {missing[0]}; '
                    f'flows are {len(flows)}). Re-run `{flow_command(*flow_hint)}`.')
  return VideoRecord(name=name, frame_paths=tuple(frames), flow_paths=tuple(flow_by_stem[s] for s in stems),
                     mask_paths=tuple(mask_by_stem.get(s) for s in stems), frame_names=tuple(frame_names))


MAX_LISTED = 8  # problems shown in one error (the count of the others follows)


def _file_problems(path: str, kind: str, frame: str | None, frame_size: tuple[int, int] | None, *,
                   mask_rule: bool = False, multi_object: bool = False) -> list[str]:
  """Problems of one frame, flow or mask file: header, truncation, size against its frame, mask rule."""
  try:
    size = image_io.image_size(path)
  except DataError as e:
    return [str(e)]
  problems = [p for p in (image_io.truncation_problem(path),) if p]
  if frame_size is not None and size != frame_size:
    problems.append(f'{path}: the {kind} is {size[0]}x{size[1]} (h x w) but its frame {frame} is '
                    f'{frame_size[0]}x{frame_size[1]}. Resize it to the frame size (masks with nearest neighbour) '
                    'or re-make it from these frames.')
  if mask_rule and not problems:
    try:
      image_io.read_mask(path, multi_object=multi_object)
    except DataError as e:
      problems.append(str(e))
  return problems


def record_problems(record: VideoRecord, *, check: str = 'all', multi_object: bool = False) -> list[str]:
  """The problems of one video ('all' frames, the 'first' annotated one, or 'none'), one line each."""
  if check == 'none':
    return []
  indices = range(len(record)) if check == 'all' else [record.annotated[0] if record.annotated else 0]
  problems = []
  for i in indices:
    frame = record.frame_paths[i]
    frame_problems = _file_problems(frame, 'frame', None, None)
    problems += frame_problems
    if frame_problems:
      continue
    size = image_io.image_size(frame)
    problems += _file_problems(record.flow_paths[i], 'flow', frame, size)
    if record.mask_paths[i] is not None:
      problems += _file_problems(record.mask_paths[i], 'mask', frame, size, mask_rule=True,
                                 multi_object=multi_object)
  return list(dict.fromkeys(problems))  # a reused last flow is checked twice


def check_record(record: VideoRecord, *, check: str = 'all', multi_object: bool = False) -> None:
  """Raises one DataError listing every problem of `record` (see record_problems)."""
  raise_problems(record_problems(record, check=check, multi_object=multi_object), f'video {record.name!r}')


def raise_problems(problems: Sequence[str], where: str) -> None:
  """One DataError for all `problems` (the first MAX_LISTED shown), or nothing when there are none."""
  if not problems:
    return
  if len(problems) == 1:
    raise DataError(problems[0])
  shown = '\n  '.join(problems[:MAX_LISTED])
  more = f'\n  ... and {len(problems) - MAX_LISTED} more' if len(problems) > MAX_LISTED else ''
  raise DataError(f'{len(problems)} problems in {where}; fix or remove these files (a frame together with its '
                  f'mask and flow):\n  {shown}{more}')


def _problems_of_all(check_one: Callable[[object], list[str]], items: Sequence[object]) -> list[str]:
  """check_one over `items` on a few threads (file reads and PNG decoding release the GIL), in order."""
  if len(items) < 4:
    return [p for item in items for p in check_one(item)]
  workers = min(8, os.cpu_count() or 1, len(items))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return [p for found in pool.map(check_one, items) for p in found]


# ------------------------------------------------------------------------------------------------
# Layouts.


def _files(folder: str) -> list[str]:
  return [p for p in image_io.list_image_files(folder)] if os.path.isdir(folder) else []


def _split_flat(paths: list[str]) -> dict[str, list[str]]:
  groups: dict[str, list[str]] = {}
  for p in paths:
    s = image_io.stem(p)
    if '_' not in s:
      raise DataError(f'{p}: a flat-layout file must be named <video>_<frame>.* (the video is the name before '
                      'the last "_").')
    groups.setdefault(s.rsplit('_', 1)[0], []).append(p)
  return groups


def _read_flat(folder: str, *, dense: bool, prefix: str = '') -> list[VideoRecord]:
  rgb_dir, gt_dir, flow_dir = (os.path.join(folder, s) for s in ('RGB', 'GT', 'FLOW'))
  frames = _split_flat(_files(rgb_dir))
  if not frames:
    raise DataError(f'{rgb_dir}: no frames (.jpg/.png). Expected the flat layout {folder}/RGB/<video>_<frame>.jpg.')
  masks = _split_flat(_files(gt_dir))
  for video in masks:
    if video not in frames:
      raise DataError(f'{masks[video][0]}: a mask of video {video!r}, which has no frames in {rgb_dir}.')
  flows = _split_flat(_files(flow_dir)) if os.path.isdir(flow_dir) else None
  if flows is not None:
    for video in flows:
      if video not in frames:
        raise DataError(f'{flows[video][0]}: a flow of video {video!r}, which has no frames in {rgb_dir}.')
  records = []
  for video in sorted(frames, key=image_io.natural_key):
    paths = frames[video]
    names = [image_io.stem(p).rsplit('_', 1)[1] for p in paths]
    records.append(_pair(prefix + video, paths, masks.get(video, []),
                         None if flows is None else flows.get(video, []), dense=dense, frame_names=names,
                         flow_hint=(rgb_dir, flow_dir)))
  return records


def _leaf_dirs(folder: str) -> list[str]:
  """Relative paths of the sub-folders (one or two levels) of `folder` that hold images."""
  out = []
  for name in sorted(os.listdir(folder), key=image_io.natural_key):
    sub = os.path.join(folder, name)
    if not os.path.isdir(sub) or name.startswith('.'):
      continue
    if any(image_io.is_image_file(n) for n in os.listdir(sub)):
      out.append(name)
    else:
      out += [f'{name}/{n}' for n in sorted(os.listdir(sub), key=image_io.natural_key)
              if os.path.isdir(os.path.join(sub, n)) and any(image_io.is_image_file(f) for f in
                                                             os.listdir(os.path.join(sub, n)))]
  return out


def _resolution(folder: str) -> str:
  """JPEGImages/480p style: descend into a single resolution folder when there is one."""
  for res in ('480p', '1080p', 'Full-Resolution'):
    if os.path.isdir(os.path.join(folder, res)):
      return os.path.join(folder, res)
  return folder


def _read_nested(root: str, *, dense: bool, only: Sequence[str] | None = None) -> list[VideoRecord]:
  frames_dir = _resolution(os.path.join(root, 'JPEGImages'))
  rel = os.path.relpath(frames_dir, os.path.join(root, 'JPEGImages'))
  masks_dir = os.path.normpath(os.path.join(root, 'Annotations', rel))
  flow_dir = os.path.normpath(os.path.join(root, 'FLOW', rel))
  if not os.path.isdir(masks_dir):
    raise DataError(f'{masks_dir}: the annotation folder is missing (expected beside {frames_dir}).')
  videos = _leaf_dirs(frames_dir)
  if only is not None:
    wanted = set(only)
    unknown = sorted(wanted - set(videos))
    if unknown:
      raise DataError(f'The split list names videos with no frames in {frames_dir}: {", ".join(unknown[:5])}.')
    videos = [v for v in videos if v in wanted]
  if not videos:
    raise DataError(f'{frames_dir}: no video folders of frames. Expected {frames_dir}/<video>/<frame>.jpg.')
  if not os.path.isdir(flow_dir):
    raise DataError(f'{flow_dir}: the FLOW folder is missing. Make it with `{flow_command(frames_dir, flow_dir)}`.')
  records = []
  for video in videos:
    frames = _files(os.path.join(frames_dir, video))
    masks = _files(os.path.join(masks_dir, video))
    video_flow = os.path.join(flow_dir, video)
    flows = _files(video_flow) if os.path.isdir(video_flow) else None
    records.append(_pair(video, frames, masks, flows, dense=dense, frame_names=[image_io.stem(p) for p in frames],
                         flow_hint=(os.path.join(frames_dir, video), video_flow)))
  return records


def _read_nested_official(root: str, *, dense: bool) -> list[VideoRecord]:
  records = []
  for name in sorted(os.listdir(root), key=image_io.natural_key):
    sub = os.path.join(root, name)
    if os.path.isdir(os.path.join(sub, 'RGB')):
      for r in _read_flat(sub, dense=dense):
        records.append(r)
  return records


def _davis_split(root: str, split: str | None) -> list[str] | None:
  if split is None:
    return None
  for candidate in (split, 'val' if split == 'test' else split):
    for path in (os.path.join(root, 'ImageSets', '2016', f'{candidate}.txt'),
                 os.path.join(root, 'ImageSets', '480p', f'{candidate}.txt')):
      if os.path.isfile(path):
        names = []
        with open(path) as f:
          for line in f:
            line = line.strip()
            if not line:
              continue
            if '/' in line:  # '/JPEGImages/480p/bear/00000.jpg /Annotations/...'
              line = line.split()[0].strip('/').split('/')[-2]
            if line not in names:
              names.append(line)
        return names
  return None


def _resolve(name: str, root: str, split: str | None) -> str:
  if not root:
    raise DataError(f'Data set {name!r}: no root folder given.')
  if not os.path.isdir(root):
    raise DataError(f'Data set {name!r}: the folder {root} does not exist.')
  if split:
    candidates = [split] + list(_FLAT_SPLIT_FOLDERS.get(name, {}).get(split, ()))
    if name == 'synthetic':
      candidates = [split]
    for c in candidates:
      if os.path.isdir(os.path.join(root, c)):
        return os.path.join(root, c)
    if name == 'synthetic':
      raise DataError(f'{root}: no {split!r} split ({os.path.join(root, split)}). Generate the set with '
                      f'`python main.py --mode=generate --output={root}`.')
  return root


def list_videos(name: str, root: str, split: str | None = None, *, check: str = 'all') -> list[VideoRecord]:
  """The videos of data set `name` under `root` (see the module docstring), checked on load."""
  if name not in VIDEO_DATASETS:
    raise DataError(f'Unknown video data set {name!r}; choose one of {", ".join(VIDEO_DATASETS)}.')
  folder = _resolve(name, root, split)
  dense = name in DENSE
  if name == 'youtubevos' and os.path.isdir(os.path.join(folder, 'train', 'JPEGImages')):
    folder = os.path.join(folder, 'train')
  if os.path.isdir(os.path.join(folder, 'RGB')):
    records = _read_flat(folder, dense=dense)
  elif os.path.isdir(os.path.join(folder, 'JPEGImages')):
    only = _davis_split(folder, split) if name == 'davis16' else None
    records = _read_nested(folder, dense=dense, only=only)
  elif any(os.path.isdir(os.path.join(folder, n, 'RGB')) for n in os.listdir(folder)):
    records = _read_nested_official(folder, dense=dense)
  else:
    raise DataError(
        f'{folder}: not a known layout for {name!r}. Expected {folder}/RGB,GT,FLOW/<video>_<frame>.* (flat), '
        f'{folder}/<video>/RGB,GT,FLOW/... (official test layout) or {folder}/JPEGImages[/480p]/<video>/*.jpg with '
        'Annotations/ and FLOW/ beside it. See docs/data.md.')
  if not records:
    raise DataError(f'{folder}: no videos found.')
  multi_object = name in MULTI_OBJECT
  problems = _problems_of_all(lambda r: record_problems(r, check=check, multi_object=multi_object), records)
  raise_problems(problems, f'data set {name!r} at {folder}')
  return records


def list_images(name: str, root: str, split: str | None = None, *, check: str = 'all') -> list[ImageRecord]:
  """Still images with saliency masks: 'duts' (RGB/GT or DUTS-TR-Image/DUTS-TR-Mask) or 'synthetic_images'."""
  if name not in IMAGE_DATASETS:
    raise DataError(f'Unknown image data set {name!r}; choose one of {", ".join(IMAGE_DATASETS)}.')
  folder = root
  if name == 'synthetic_images' and os.path.isdir(os.path.join(root, 'images')):
    folder = os.path.join(root, 'images')
  elif name == 'duts':
    folder = _resolve(name, root, split)
  pairs = [('RGB', 'GT'), ('DUTS-TR-Image', 'DUTS-TR-Mask'), ('DUTS-TE-Image', 'DUTS-TE-Mask')]
  for img_sub, gt_sub in pairs:
    if os.path.isdir(os.path.join(folder, img_sub)):
      break
  else:
    raise DataError(f'{folder}: expected {folder}/RGB/*.jpg and {folder}/GT/*.png (or DUTS-TR-Image and DUTS-TR-Mask).')
  images = _files(os.path.join(folder, img_sub))
  masks = _files(os.path.join(folder, gt_sub))
  if not images:
    raise DataError(f'{os.path.join(folder, img_sub)}: no images.')
  mask_by_stem = {image_io.stem(m): m for m in masks}
  image_stems = {image_io.stem(p) for p in images}
  orphans = [m for s, m in mask_by_stem.items() if s not in image_stems]
  if orphans:
    raise DataError(f'{orphans[0]}: a mask with no image of the same name ({len(orphans)} such masks).')
  missing = [p for p in images if image_io.stem(p) not in mask_by_stem]
  if missing:
    raise DataError(f'{missing[0]}: an image with no mask ({len(missing)} of {len(images)} images). Every image '
                    f'needs <name>.png in {os.path.join(folder, gt_sub)}.')
  records = [ImageRecord(image_io.stem(p), p, mask_by_stem[image_io.stem(p)]) for p in images]
  chosen = records if check == 'all' else records[:1] if check == 'first' else []

  def image_problems(r: ImageRecord) -> list[str]:
    problems = _file_problems(r.image_path, 'image', None, None)
    if problems:
      return problems
    return _file_problems(r.mask_path, 'mask', r.image_path, image_io.image_size(r.image_path), mask_rule=True)

  raise_problems(_problems_of_all(image_problems, chosen), f'data set {name!r} at {folder}')
  return records

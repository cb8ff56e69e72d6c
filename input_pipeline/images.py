"""Image and mask IO with clear errors, natural ordering, and all-or-nothing output folders.

Mask rule (used by every reader): a mask file is accepted when it is
  * a palette PNG (mode 'P'): every non-zero palette index is foreground (multi-object masks such as
    YouTube-VOS or DAVIS-17 merge into one foreground); palette entry 0 must be black, so that the
    RGB-decoded mask read by tf.data agrees;
  * a grey (or grey-as-RGB) image with at most two distinct values, one of them 0 (0/1, 0/255, 0/v):
    non-zero is foreground;
  * with `multi_object=True` (FBMS, YouTube-Objects): any grey or colour image; every non-zero pixel
    (in any channel) is foreground.
Anything else (soft or JPEG-compressed masks, colour masks of a single-object dataset) is an error that
names the file and says how to fix it.
"""

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from gsa_jax import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.webp', '.tif', '.tiff')
MASK_FIX = ('Masks must be binary (two values, one of them 0, e.g. 0/255) or palette PNGs. Re-export it as a '
            'lossless PNG, e.g. `cv2.imwrite(path, (mask > 127).astype(np.uint8) * 255)`.')


class DataError(errors.UserError):
  """A dataset, image or video that cannot be used as it is; the message names the file and the fix."""


def natural_key(name: str) -> list:
  """Sort key that orders '2' before '10' ('frame2.jpg' < 'frame10.jpg')."""
  return [int(p) if p.isdigit() else p.lower() for p in re.split(r'(\d+)', name)]


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def list_image_files(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Image files directly in `folder`, naturally sorted (full paths)."""
  if not os.path.isdir(folder):
    raise DataError(f'The folder {folder} does not exist.')
  names = [n for n in os.listdir(folder) if n.lower().endswith(tuple(extensions)) and not n.startswith('.')]
  return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def read_rgb(path: str) -> np.ndarray:
  """uint8 [h, w, 3] RGB. Raises DataError naming the file when it is missing or cannot be decoded."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: the image file does not exist.')
  data = np.fromfile(path, dtype=np.uint8)
  image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
  if image is None:
    raise DataError(f'{path}: cannot decode the image (corrupt, truncated or not an image). Re-extract or '
                    're-export this file, or delete it together with its mask and flow.')
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: str) -> tuple[int, int]:
  """(h, w) from the file header (cheap). Raises DataError for unreadable files."""
  try:
    with Image.open(path) as im:
      w, h = im.size
  except FileNotFoundError as e:
    raise DataError(f'{path}: the file does not exist.') from e
  except Exception as e:  # PIL raises several types for bad files.
    raise DataError(f'{path}: cannot read the image header ({e}). The file is corrupt or not an image; '
                    're-export it.') from e
  return h, w


_JPEG_START, _JPEG_END = b'\xff\xd8', b'\xff\xd9'
_PNG_START, _PNG_END = b'\x89PNG\r\n\x1a\n', b'IEND\xaeB`\x82'
_TAIL = 64  # bytes read from the end of a file: the end marker may be followed by a little padding


def truncation_problem(path: str) -> str | None:
  """Why a JPEG or PNG file is cut short (no end marker: JPEG FFD9, PNG IEND), or None; two small reads."""
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
      f.seek(max(os.fstat(f.fileno()).st_size - _TAIL, 0))
      tail = f.read()
  except OSError as e:
    return f'{path}: cannot read the file ({e}).'
  if head.startswith(_JPEG_START) and _JPEG_END not in tail:
    kind = 'JPEG (no end marker FFD9)'
  elif head.startswith(_PNG_START) and _PNG_END not in tail:
    kind = 'PNG (no IEND chunk)'
  else:
    return None
  return (f'{path}: truncated {kind}: the file was cut short (an interrupted copy or download). Re-extract or '
          're-export it, or delete it together with its mask and flow.')


def read_mask(path: str, *, multi_object: bool = False) -> np.ndarray:
  """uint8 [h, w] in {0, 1} under the mask rule of this module."""
  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      palette = im.getpalette() if mode == 'P' else None
      array = np.asarray(im)
  except FileNotFoundError as e:
    raise DataError(f'{path}: the mask file does not exist.') from e
  except Exception as e:
    raise DataError(f'{path}: cannot decode the mask ({e}). The file is corrupt or not an image; '
                    're-export it as PNG.') from e
  if mode == 'P':
    if palette and any(palette[:3]):
      raise DataError(f'{path}: palette mask whose entry 0 is not black ({palette[:3]}); background must be '
                      'index 0 drawn black. ' + MASK_FIX)
    return (array > 0).astype(np.uint8)
  if array.ndim == 3:
    array = array[..., :3] if mode in ('RGBA', 'LA') or array.shape[-1] == 4 else array
    if array.shape[-1] == 2:  # LA
      array = array[..., 0]
    elif np.all(array == array[..., :1]):
      array = array[..., 0]
    elif multi_object:
      return (array.max(axis=-1) > 0).astype(np.uint8)
    else:
      colours = np.unique(array.reshape(-1, array.shape[-1]), axis=0)
      if len(colours) > 2 or not np.any(np.all(colours == 0, axis=-1)):
        raise DataError(f'{path}: colour mask with {len(colours)} colours is neither binary nor palette. ' +
                        MASK_FIX)
      return (array.max(axis=-1) > 0).astype(np.uint8)
  if array.dtype == bool:
    return array.astype(np.uint8)
  if not multi_object:  # the grey levels present (a histogram is much faster than np.unique on uint8)
    values = (np.flatnonzero(np.bincount(array.ravel(), minlength=256)) if array.dtype == np.uint8
              else np.unique(array))
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
      shown = ', '.join(str(v) for v in values[:6]) + (', ...' if len(values) > 6 else '')
      raise DataError(f'{path}: mask with {len(values)} grey levels ({shown}) is neither binary nor palette. ' +
                      MASK_FIX)
  return (array > 0).astype(np.uint8)


def write_jpg(path: str, rgb: np.ndarray, quality: int = 95) -> None:
  ok, buf = cv2.imencode('.jpg', cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise DataError(f'{path}: JPEG encoding failed.')
  buf.tofile(path)


def write_png(path: str, image: np.ndarray) -> None:
  if image.ndim == 3:
    image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode('.png', image)
  if not ok:
    raise DataError(f'{path}: PNG encoding failed.')
  buf.tofile(path)


@contextlib.contextmanager
def atomic_output_dir(path: str, *, replace_if=None, replace_hint: str = '') -> Iterator[str]:
  """Yields a temporary folder beside `path`; renames it to `path` on success, deletes it on failure.

  `path` must not exist, or be an empty folder, or satisfy `replace_if(path)` (then it is replaced).
  `replace_hint` (e.g. 'pass --overwrite') is added to the refusal of a non-empty folder.
  Nothing half-written is ever left at `path`.
  """
  path = os.path.abspath(path)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise DataError(f'The output {path} exists and is a file; choose another output folder.')
    if os.listdir(path) and not (replace_if and replace_if(path)):
      raise DataError(f'The output folder {path} already exists and is not empty; remove it, choose '
                      f'another output folder{" or " + replace_hint if replace_hint else ""}.')
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.tmp-', dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would survive the rename
  try:
    yield tmp
    if os.path.exists(path):
      old = f'{path}.old-{uuid.uuid4().hex[:8]}'
      os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise

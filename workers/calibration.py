"""Real inputs for calibration and fidelity: folders of images and .npy/.npz batches.

Images go through the model's preprocessing (resize the short side, centre-crop, normalise),
the torchvision classification recipe by default. Unreadable files (corrupt or truncated) are
skipped and counted, never a crash; too few usable samples is one clear error naming the folder.
`split` cuts one set into a calibration part and a held-out part that never overlap: fidelity is
measured only on inputs the calibrator has not seen. `SamplesReader` feeds ONNX Runtime's calibrators.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from workers.structs import Preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
ARRAY_SUFFIXES = {".npy", ".npz"}
SIDE_FILES = {".md", ".csv", ".txt"}  # a README or a labels file beside the data is not a bad sample
# Each file the loaders skip is logged here, one line naming it: the CLI prints these as warnings, so
# a truncated photo never disappears from the calibration set without a word.
log = logging.getLogger(__name__)


class CalibrationDataError(ValueError):
    """The data cannot serve as model input; the message names the file or folder."""


@dataclass
class Samples:
    """A stack of preprocessed inputs [N, C, H, W] and where each row came from."""

    array: np.ndarray
    files: list[str]
    skipped: list[str] = field(default_factory=list)  # "name: reason" for files that could not be used
    labels: np.ndarray | None = None  # class id per row, -1 where unknown; see load_labels

    def __len__(self) -> int:
        return len(self.array)


def load_images(folder: str | Path, preprocess: Preprocess, *, limit: int | None = None, min_samples: int = 1) -> Samples:
    """Read every image of `folder` (sorted by name) into one float32 array."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationDataError(f"{root}: not a folder of images")
    paths = sorted(p for p in root.iterdir() if p.is_file())
    rows: list[np.ndarray] = []
    files: list[str] = []
    skipped: list[str] = []
    for path in paths:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.suffix.lower() not in SIDE_FILES:
                skipped.append(f"{path.name}: not an image file")
                log.warning("%s: skipped, not an image file", path)
            continue
        try:
            rows.append(_read_image(path, preprocess))
        except CalibrationDataError as exc:
            skipped.append(f"{path.name}: {exc}")
            log.warning("%s: skipped, %s", path, exc)
            continue
        files.append(path.name)
        if limit is not None and len(rows) >= limit:
            break
    if len(rows) < min_samples:
        raise CalibrationDataError(_too_few_images(root, paths, len(rows), min_samples, skipped))
    return Samples(array=np.stack(rows).astype(np.float32), files=files, skipped=skipped)


def _read_image(path: Path, preprocess: Preprocess) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # the full decode: a truncated JPEG fails here rather than later
            return preprocess_image(as_rgb(image), preprocess)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CalibrationDataError(f"unreadable image ({exc})") from exc


def as_rgb(image: object) -> object:
    """8-bit RGB of any image. Pillow's convert("RGB") clips 16- and 32-bit grey values at 255 (a
    16-bit PNG turns mostly white), so those are scaled to 8 bits first: 16-bit by 65535 / 255, float
    images in [0, 1] by 255."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max(initial=0))
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        values = values / 257.0
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")


def _too_few_images(root: Path, paths: list[Path], usable: int, needed: int, skipped: list[str]) -> str:
    if not paths:
        return f"{root}: the folder is empty; put at least {needed} images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it"
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return f"{root}: no image files among {len(paths)} files (expected {', '.join(sorted(IMAGE_SUFFIXES))})"
    detail = f"; {len(skipped)} skipped, first: {skipped[0]}" if skipped else ""
    return f"{root}: {usable} usable images, at least {needed} needed{detail}"


def preprocess_image(image: object, preprocess: Preprocess) -> np.ndarray:
    """Resize the shorter side to `resize`, centre-crop `crop` x `crop`, scale to [0,1], normalise; CHW."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    width, height = image.size
    scale = preprocess.resize / min(width, height)
    resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    left = (resized.width - preprocess.crop) // 2
    top = (resized.height - preprocess.crop) // 2
    cropped = resized.crop((left, top, left + preprocess.crop, top + preprocess.crop))
    scaled = np.asarray(cropped, dtype=np.float32) / np.float32(255.0)
    pixels = (scaled - np.asarray(preprocess.mean, dtype=np.float32)) / np.asarray(preprocess.std, dtype=np.float32)
    return pixels.transpose(2, 0, 1)


def load_arrays(path: str | Path, input_shape: Sequence[int | str]) -> Samples:
    """Read model inputs already preprocessed: one .npy [N, *input_shape], an .npz holding one such
    array, or a folder of .npy files (each [N, *input_shape] or one sample [*input_shape]).

    `input_shape` is one sample without the batch axis, as in ModelRef; a str dim matches any size.
    In a folder, files that do not load are skipped and counted; a wrong shape is always an error.
    """
    root = Path(path)
    if root.is_dir():
        return _load_array_folder(root, input_shape)
    if not root.is_file():
        raise CalibrationDataError(f"{root}: no such file or folder")
    if root.suffix.lower() not in ARRAY_SUFFIXES:
        raise CalibrationDataError(f"{root}: expected a .npy or .npz file")
    array = _check_shape(root, _read_array(root), input_shape)
    if len(array) == 0:
        raise CalibrationDataError(f"{root}: the array holds no samples")
    return Samples(array=array, files=[f"{root.name}[{i}]" for i in range(len(array))])


@dataclass(frozen=True)
class Count:
    """What a path holds, found from file headers only (nothing decoded): images, or array shapes."""

    path: Path
    images: int
    shapes: dict[str, tuple[int, ...]]  # array files: file name -> its shape
    skipped: list[str]

    def samples(self, input_shape: Sequence[int | str]) -> int:
        """Rows for a model taking `input_shape`; raises CalibrationDataError where an array's shape cannot serve it
        (load_arrays' rule: a file is [N, *input_shape]; in a folder, one sample [*input_shape] is allowed too)."""
        if not self.shapes:
            return self.images
        total = 0
        for name, shape in self.shapes.items():
            one = self.path.is_dir() and len(shape) == len(input_shape)
            rows = (1, *shape) if one else shape
            if len(rows) != len(input_shape) + 1 or any(isinstance(d, int) and d != n for d, n in zip(input_shape, rows[1:], strict=True)):
                raise CalibrationDataError(f"{self.path / name if self.path.is_dir() else self.path}: array of shape {list(shape)}, "
                                           f"expected [{', '.join(str(d) for d in ['N', *input_shape])}]")
            total += rows[0]
        return total


def count_samples(path: str | Path) -> Count:
    """Count what an image folder, an .npy/.npz file or a folder of them holds, reading headers only.

    An image counts when Pillow recognises its header; a file that decodes badly later (a
    truncated JPEG) is skipped and logged when it is loaded."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    arrays = root.suffix.lower() in ARRAY_SUFFIXES or any(p.suffix.lower() in ARRAY_SUFFIXES for p in files)
    wanted = ARRAY_SUFFIXES if arrays else IMAGE_SUFFIXES
    images, shapes, skipped = 0, {}, []
    for file in files:
        suffix = file.suffix.lower()
        if suffix not in wanted:
            if suffix not in SIDE_FILES:
                skipped.append(f"{file.name}: not {'a .npy or .npz' if arrays else 'an image'} file")
            continue
        try:
            if arrays:
                shapes[file.name] = _array_header(file)
            else:
                _image_header(file)
                images += 1
        except CalibrationDataError as exc:
            skipped.append(f"{file.name}: {exc}")
    return Count(root, images, shapes, skipped)


def _image_header(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):  # reads the header; the pixels stay on disk
            pass
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CalibrationDataError(f"unreadable image ({exc})") from exc


def _array_header(path: Path) -> tuple[int, ...]:
    """The shape in an .npy header, or in the one array of an .npz, without reading the data."""
    try:
        if path.suffix.lower() == ".npz":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".npy")]
                if len(names) != 1:
                    raise CalibrationDataError(f"an .npz must hold exactly one array, found {len(names)}")
                with archive.open(names[0]) as handle:
                    return _npy_shape(handle)
        with path.open("rb") as handle:
            return _npy_shape(handle)
    except CalibrationDataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CalibrationDataError(numpy_problem(exc, path)) from exc


def numpy_problem(exc: BaseException, path: Path) -> str:
    """Why an .npy/.npz did not load, in farm's words only. numpy's own messages quote the file: a wrong
    magic says `got b'root:*'` (the first bytes of whatever the path points at, /etc/shadow through a
    symlink), a bad header repeats the header; none of it may reach an error line or a log."""
    if isinstance(exc, OSError):
        return f"cannot read it ({(exc.strerror or type(exc).__name__).lower()})"
    suffix = path.suffix.lower()
    if isinstance(exc, zipfile.BadZipFile):
        return "not a .npz file"
    if isinstance(exc, EOFError):
        return "not a readable numpy file (it ends inside its header)"
    # np.load calls anything that is neither .npy nor zip "pickled data": it is not an array file either way
    if "magic string" in str(exc) or "pickled" in str(exc):
        return f"not a {suffix} file" if suffix in ARRAY_SUFFIXES else "not a .npy or .npz file"
    return "not a readable numpy file (its header is damaged)"


def _npy_shape(handle: IO[bytes]) -> tuple[int, ...]:
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read(handle)
    if not np.issubdtype(dtype, np.number):
        raise CalibrationDataError(f"dtype {dtype} is not numeric")
    return tuple(int(d) for d in shape)


def nonfinite_problem(path: str | Path) -> str | None:
    """The first array file under `path` (an .npy/.npz, or a folder of them) holding NaN or Inf, as
    "file: row R holds N non-finite values", or None. Such rows would calibrate ranges to NaN and
    judge every engine against a reference that is not a number."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    for file in files:
        if file.suffix.lower() not in ARRAY_SUFFIXES:
            continue
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False) if file.suffix.lower() == ".npy" else _read_array(file)
        except (OSError, ValueError, EOFError, CalibrationDataError):
            continue  # unreadable: the loader skips it and says so
        if not np.issubdtype(array.dtype, np.floating):
            continue  # integers cannot be NaN
        rows = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(1, -1)
        for start in range(0, len(rows), 256):  # a chunk at a time: a large .npy stays on disk
            bad = ~np.isfinite(rows[start : start + 256])
            if bad.any():
                row = start + int(np.flatnonzero(bad.any(axis=1))[0])
                return f"{file}: row {row} holds {int(bad[row - start].sum())} NaN or Inf values (inputs must be finite)"
    return None


def _load_array_folder(root: Path, input_shape: Sequence[int | str]) -> Samples:
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() not in SIDE_FILES)
    chunks: list[np.ndarray] = []
    files: list[str] = []
    skipped: list[str] = []
    for p in paths:
        if p.suffix.lower() not in ARRAY_SUFFIXES:
            skipped.append(f"{p.name}: not a .npy or .npz file")
            continue
        try:
            raw = _read_array(p)
        except CalibrationDataError as exc:
            skipped.append(f"{p.name}: {exc}")
            log.warning("%s: skipped, %s", p, exc)
            continue
        if raw.ndim == len(input_shape):
            raw = raw[None]
        array = _check_shape(p, raw, input_shape)
        chunks.append(array)
        files.extend(f"{p.name}[{i}]" for i in range(len(array)))
    if not files:
        what = "the folder is empty" if not paths else f"no loadable .npy/.npz among {len(paths)} files ({len(skipped)} skipped)"
        raise CalibrationDataError(f"{root}: {what}")
    return Samples(array=np.concatenate(chunks).astype(np.float32), files=files, skipped=skipped)


def _read_array(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CalibrationDataError(f"{path}: {numpy_problem(exc, path)}") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if len(names) != 1:
                raise CalibrationDataError(f"{path}: an .npz must hold exactly one array, found {len(names)} ({', '.join(names)})")
            loaded = loaded[names[0]]
    if not np.issubdtype(loaded.dtype, np.number):
        raise CalibrationDataError(f"{path}: dtype {loaded.dtype} is not numeric")
    return np.asarray(loaded)


def _check_shape(path: Path, array: np.ndarray, input_shape: Sequence[int | str]) -> np.ndarray:
    expected = ["N", *input_shape]
    matches = array.ndim == len(expected) and all(isinstance(d, str) or d == n for d, n in zip(input_shape, array.shape[1:], strict=True))
    if not matches:
        raise CalibrationDataError(
            f"{path}: array of shape {list(array.shape)}, expected [{', '.join(str(d) for d in expected)}]"
        )
    return array.astype(np.float32)


def load_labels(path: str | Path, files: Sequence[str], class_names: Sequence[str] | None = None) -> np.ndarray | None:
    """Class ids for `files` from a `file,label` CSV, or None when the labels cannot be class ids.

    Labels may be integer class ids, or class names mapped through `class_names` (case-insensitive).
    A file without a row, or a name not in `class_names`, gets -1 (unknown; accuracy skips it). Names
    without `class_names` (like calibration_data's descriptive labels) give None, as does a file where
    no row is known. For .npy samples ("x.npy[3]") the row is looked up by that name, then by "x.npy".
    """
    source = Path(path)
    try:
        with source.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationDataError(f"{source}: cannot read labels ({exc})") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "label"]:
        rows = rows[1:]
    bad = next((i for i, row in enumerate(rows) if len(row) < 2), None)
    if bad is not None:
        raise CalibrationDataError(f"{source}: row {bad + 2} is not 'file,label'")
    table = {row[0].strip(): row[1].strip() for row in rows}
    ids = _label_ids(table, class_names)
    if ids is None:
        return None
    labels = np.array([ids.get(name, ids.get(name.split("[", 1)[0], -1)) for name in files], dtype=np.int64)
    return labels if (labels >= 0).any() else None


def _label_ids(table: dict[str, str], class_names: Sequence[str] | None) -> dict[str, int] | None:
    if all(_is_int(label) for label in table.values()):
        return {name: int(label) for name, label in table.items()}
    if class_names is None:
        return None
    index = {name.lower(): i for i, name in enumerate(class_names)}
    return {name: index.get(label.lower(), -1) for name, label in table.items()}


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def split(samples: Samples, calibration_count: int, holdout_count: int | None = None) -> tuple[Samples, Samples]:
    """Disjoint calibration and held-out parts: calibration from the front, held-out from the back.

    Taking the held-out part from the end keeps it the same whatever `calibration_count` is, so
    variants calibrated on 8, 16 or 32 samples are judged on the very same inputs. None for
    `holdout_count` means every sample the calibration part leaves.
    """
    total = len(samples)
    holdout = total - calibration_count if holdout_count is None else holdout_count
    if calibration_count < 1 or holdout < 1 or calibration_count + holdout > total:
        raise CalibrationDataError(
            f"{total} usable samples cannot give {calibration_count} for calibration and {holdout} held out"
            f" (need {calibration_count + max(holdout, 1)}, at least 1 of each)"
        )
    return _rows(samples, slice(0, calibration_count)), _rows(samples, slice(total - holdout, total))


def _rows(samples: Samples, rows: slice) -> Samples:
    return dataclasses.replace(
        samples,
        array=samples.array[rows],
        files=samples.files[rows],
        labels=None if samples.labels is None else samples.labels[rows],
    )


@dataclass(frozen=True)
class Augmented:
    """Calibration rows topped up to a minimum, and what was added (None when nothing was)."""

    array: np.ndarray
    description: str | None


# The transforms that top up a small calibration set, in the order they are used: each pass over the
# original rows applies the next one. Crops cut CROP_FRACTION of each side off one corner and scale
# back to the full size, a shift and zoom of a few pixels, as a photo taken a little closer would be.
AUGMENTATIONS: tuple[str, ...] = ("hflip", "crop-tl", "hflip+crop-br", "crop-br", "hflip+crop-tl")
CROP_FRACTION = 1 / 16


def augment(rows: np.ndarray, minimum: int) -> Augmented:
    """`rows` [N, C, H, W] with flipped and cropped copies appended until there are `minimum` rows.

    Deterministic: copy i is original row i % N under AUGMENTATIONS[i // N] (cycling). Only image
    batches (4-D, both sides at least 8) are augmented; other inputs are returned as they are.
    """
    count = len(rows)
    if count == 0 or count >= minimum or rows.ndim != 4 or min(rows.shape[2:]) < 8:
        return Augmented(rows, None)
    added = [_transform(rows[i % count], AUGMENTATIONS[(i // count) % len(AUGMENTATIONS)]) for i in range(minimum - count)]
    used = sorted({AUGMENTATIONS[(i // count) % len(AUGMENTATIONS)] for i in range(minimum - count)}, key=AUGMENTATIONS.index)
    description = f"{count} rows + {len(added)} augmented ({', '.join(used)}; crops {CROP_FRACTION:.4g} of a side) = {minimum}"
    return Augmented(np.concatenate([rows, np.stack(added).astype(rows.dtype)]), description)


def _transform(row: np.ndarray, name: str) -> np.ndarray:
    out = row[:, :, ::-1] if "hflip" in name else row
    if "crop" in name:
        height, width = row.shape[1:]
        dy, dx = max(1, round(height * CROP_FRACTION)), max(1, round(width * CROP_FRACTION))
        top, left = (0, 0) if name.endswith("tl") else (dy, dx)
        out = _resize(out[:, top : top + height - dy, left : left + width - dx], height, width)
    return np.ascontiguousarray(out)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a CHW array (align-corners sampling), in numpy: the rows are preprocessed already."""
    ys, xs = np.linspace(0, image.shape[1] - 1, height), np.linspace(0, image.shape[2] - 1, width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, image.shape[1] - 1), np.minimum(x0 + 1, image.shape[2] - 1)
    wy, wx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = image[:, y0][:, :, x0] * (1 - wx) + image[:, y0][:, :, x1] * wx
    bottom = image[:, y1][:, :, x0] * (1 - wx) + image[:, y1][:, :, x1] * wx
    resized: np.ndarray = (top * (1 - wy) + bottom * wy).astype(image.dtype)
    return resized


class SamplesReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds `samples` to ONNX Runtime's calibrators in batches of `batch_size` under `input_name`."""

    def __init__(self, samples: Samples | np.ndarray, input_name: str, batch_size: int = 8, dtype: str = "float32") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: expected at least 1")
        self._array = (samples.array if isinstance(samples, Samples) else samples).astype(dtype)
        self._input_name = input_name
        self._batch_size = batch_size
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._array):
            return None
        batch = self._array[self._next : self._next + self._batch_size]
        self._next += self._batch_size
        return {self._input_name: batch}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return -(-len(self._array) // self._batch_size)


def load_inputs(path: str | Path, preprocess: Preprocess, input_shape: Sequence[int | str]) -> Samples:
    """Model inputs from whatever `path` holds: .npy/.npz arrays (already preprocessed) or images."""
    root = Path(path)
    arrays = root.suffix.lower() in ARRAY_SUFFIXES or (root.is_dir() and any(p.suffix.lower() in ARRAY_SUFFIXES for p in root.iterdir()))
    return load_arrays(root, input_shape) if arrays else load_images(root, preprocess)

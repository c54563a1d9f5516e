"""Real inputs for calibration and fidelity: folders of images and .npy/.npz batches.

Images go through the model's preprocessing (resize the short side, centre-crop, normalise),
the torchvision classification recipe by default. Unreadable files are skipped and counted,
never a crash; too few usable samples is one clear error naming the folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.records import Preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class CalibrationDataError(ValueError):
    """The data cannot serve as model input; the message names the file or folder."""


@dataclass
class Samples:
    """A stack of preprocessed inputs [N, C, H, W] and where each row came from."""

    array: np.ndarray
    files: list[str]
    skipped: list[str] = field(default_factory=list)  # "name: reason" for files that could not be used


def load_images(folder: str | Path, preprocess: Preprocess, *, limit: int | None = None, min_samples: int = 1) -> Samples:
    """Read every image of `folder` (sorted by name) into one float32 array."""
    from PIL import Image, UnidentifiedImageError

    root = Path(folder)
    if not root.is_dir():
        raise CalibrationDataError(f"{root}: not a folder of images")
    rows: list[np.ndarray] = []
    files: list[str] = []
    skipped: list[str] = []
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.suffix.lower() not in {".md", ".csv", ".txt"}:
                skipped.append(f"{path.name}: not an image file")
            continue
        try:
            with Image.open(path) as image:
                rows.append(preprocess_image(image.convert("RGB"), preprocess))
        except (UnidentifiedImageError, OSError) as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        files.append(path.name)
        if limit is not None and len(rows) >= limit:
            break
    if len(rows) < min_samples:
        raise CalibrationDataError(
            f"{root}: {len(rows)} usable images, at least {min_samples} needed" + (f" ({len(skipped)} skipped)" if skipped else "")
        )
    return Samples(array=np.stack(rows).astype(np.float32), files=files, skipped=skipped)


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
    pixels = np.asarray(cropped, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(preprocess.mean, dtype=np.float32)) / np.asarray(preprocess.std, dtype=np.float32)
    return pixels.transpose(2, 0, 1)

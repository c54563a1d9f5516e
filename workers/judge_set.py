"""Judge-set hygiene: which judge (held-out) images are copies of calibration images, and how much a
judge set of n images can tell.

Two images are the same picture when their decoded pixels are identical (a file copied under
another name, or re-encoded losslessly: JPEG to PNG keeps the decoded pixels), or when their 64-bit
difference hashes (dHash: a 9x8 grayscale thumbnail, one bit per horizontal gradient) differ in at
most DHASH_DISTANCE bits: a re-encoded or resized copy. Distinct photographs of the bundled set are
12 or more bits apart; a PNG or a half-size JPEG of one of them is 0 bits from it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.calibration import IMAGE_SUFFIXES, CalibrationDataError, as_rgb
from workers.stats import Z95

DHASH_DISTANCE = 6


@dataclass(frozen=True)
class Fingerprint:
    file: str
    pixels: str  # sha256 of the decoded 8-bit RGB pixels and their shape
    dhash: int | None  # 64-bit difference hash; None for rows that are not images


@dataclass(frozen=True)
class Overlap:
    judge: str  # the judge image's file name
    calibration: str  # the calibration image it copies
    how: str  # "same pixels" or "dHash N bits apart"


def image_fingerprints(folder: Path) -> list[Fingerprint]:
    """Every image of `folder` that decodes, in name order (load_images' order); unreadable ones are left out."""
    from PIL import Image, UnidentifiedImageError

    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as image:
                image.load()
                rgb = as_rgb(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError, CalibrationDataError):
            continue  # load_images skips it too, and says so
        found.append(fingerprint(path.name, rgb))
    return found


def array_fingerprints(rows: np.ndarray, files: list[str]) -> list[Fingerprint]:
    """Rows of preprocessed inputs, compared by their exact values only: arrays are made at the
    model's input size, and a perceptual hash of a small input (8x8 digits) would call different
    samples of one class the same picture."""
    return [Fingerprint(name, hashlib.sha256(repr(row.shape).encode() + np.ascontiguousarray(row).tobytes()).hexdigest(), None)
            for name, row in zip(files, rows, strict=True)]


def fingerprint(name: str, rgb: object) -> Fingerprint:
    from PIL import Image

    assert isinstance(rgb, Image.Image)
    pixels = np.asarray(rgb, dtype=np.uint8)
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    return Fingerprint(name, digest, _dhash(rgb.convert("L")))


def _dhash(gray: object) -> int:
    """One bit per horizontal step of a 9x8 thumbnail: 1 where brightness rises."""
    from PIL import Image

    assert isinstance(gray, Image.Image)
    thumb = np.asarray(gray.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    bits = (thumb[:, 1:] > thumb[:, :-1]).reshape(-1)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def overlaps(calibration: list[Fingerprint], judge: list[Fingerprint], max_distance: int = DHASH_DISTANCE) -> list[Overlap]:
    """Each judge image that is the same picture as some calibration image (exact pixels first)."""
    by_pixels = {f.pixels: f.file for f in calibration}
    found = []
    for image in judge:
        if image.pixels in by_pixels:
            found.append(Overlap(image.file, by_pixels[image.pixels], "same pixels"))
            continue
        if image.dhash is None:
            continue
        near = ((bin(image.dhash ^ c.dhash).count("1"), c.file) for c in calibration if c.dhash is not None)
        distance, twin = min(near, default=(65, ""))
        if distance <= max_distance:
            found.append(Overlap(image.file, twin, f"dHash {distance} bits apart"))
    return found


def wilson_half_width(n: int, z: float = Z95) -> float:
    """Half the width of the widest Wilson score interval a proportion over n trials can get (at p = 0.5)."""
    if n < 1:
        return 0.5
    p = 0.5
    return z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)

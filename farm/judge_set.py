"""Which judge images a sweep judges on: the held-out rows, less the copies of calibration images.

The check runs when the plan is made, before any work: its result (the judge files left out) is
part of the held-out data's digest, so the number of judged images always matches the job keys.
Its notes are the sweep's warnings: the copies by name, and the interval width a small judge set implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.spec import SpecError, SweepSpec
from workers.calibration import ARRAY_SUFFIXES
from workers.judge_set import Fingerprint, Overlap, image_fingerprints, overlaps, wilson_half_width

# Below this many judged images a 95% interval on top-1 agreement is wider than +-0.14.
FIRM_JUDGE_SET = 50


@dataclass(frozen=True)
class JudgeSet:
    excluded: tuple[str, ...]  # judge file names left out: copies of calibration images
    judged: int  # held-out images judged after that
    notes: tuple[str, ...]


def check_judge_set(spec: SweepSpec, base: Path) -> JudgeSet:
    """Compare the calibration rows' images with the judge rows' by content; raises SpecError when none is left to judge."""
    found: list[Overlap] = []
    if spec.needs_calibration():
        calibration_path = spec.calibration.folder(base)
        judge_path = spec.fidelity.folder(base, spec.calibration)
        if _images(calibration_path) and _images(judge_path):
            calibration = image_fingerprints(calibration_path)
            shared = calibration_path.resolve() == judge_path.resolve()
            judge = calibration if shared else image_fingerprints(judge_path)
            found = overlaps(calibration[: spec.calibration.samples], _last(judge, spec.fidelity.samples))
    judged = spec.fidelity.samples - len(found)
    notes = []
    if found:
        copies = ", ".join(f"{o.judge} ({o.how} as {o.calibration})" for o in found)
        notes.append(f"fidelity.data: {len(found)} judge image(s) are calibration images and are not judged: {copies}")
        if judged < 1:
            raise SpecError(f"fidelity.data: every judge image is a copy of a calibration image ({copies}): nothing is left to judge")
    if judged < FIRM_JUDGE_SET:
        notes.append(f"fidelity: {judged} judge images: a 95% interval on top-1 agreement is up to ±{wilson_half_width(judged):.2f} wide "
                     f"({FIRM_JUDGE_SET} or more give firmer verdicts)")
    return JudgeSet(tuple(o.judge for o in found), judged, tuple(notes))


def _images(path: Path) -> bool:
    """Image data: a folder without .npy/.npz files. Arrays of preprocessed rows are not compared (yet)."""
    return path.is_dir() and not any(p.suffix.lower() in ARRAY_SUFFIXES for p in path.iterdir())


def _last(images: list[Fingerprint], count: int) -> list[Fingerprint]:
    return images[len(images) - count:] if count < len(images) else images

"""Which judge images a sweep judges on: the held-out rows, less the copies of calibration images.

The check runs when the plan is made, before any work: its result (the judge files left out) is
part of the held-out data's digest, so the number of judged images always matches the job keys.
Its notes are the sweep's warnings: the copies by name, and the interval width a small judge set implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from farm.run.spec.errors import SpecError
from farm.run.spec.schema import SweepSpec
from workers.calibration import ARRAY_SUFFIXES, CalibrationDataError, load_arrays
from workers.judge_set import Fingerprint, Overlap, array_fingerprints, image_fingerprints, overlaps, wilson_half_width

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
        shared = calibration_path.resolve() == judge_path.resolve()
        calibration = _fingerprints(calibration_path, spec)
        judge = calibration if shared else _fingerprints(judge_path, spec)
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


def _fingerprints(path: Path, spec: SweepSpec) -> list[Fingerprint]:
    """The data's rows in load order: images as decoded, arrays as the loader reads them (rows named "file.npy[i]")."""
    if not path.exists():
        return []  # check_inputs says so before any work
    arrays = path.suffix.lower() in ARRAY_SUFFIXES or (path.is_dir() and any(p.suffix.lower() in ARRAY_SUFFIXES for p in path.iterdir()))
    if not arrays:
        return image_fingerprints(path) if path.is_dir() else []
    try:
        samples = load_arrays(path, spec.models[0].input_shape)
    except CalibrationDataError:
        return []  # check_inputs refuses data that cannot serve the models
    return array_fingerprints(samples.array, samples.files)


def _last(images: list[Fingerprint], count: int) -> list[Fingerprint]:
    return images[len(images) - count:] if count < len(images) else images

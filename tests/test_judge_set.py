"""Judge-set hygiene: judge images that copy calibration images (re-encoded, resized) are found by
content, named, and not judged; a small judge set is told the interval width it implies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from farm.run.driver import load_rows
from farm.run.plan import data_refs, expand
from farm.run.spec import SpecError, load_spec
from farm.run.stages import ReferenceJob
from tests.conftest import CALIBRATION_DATA, write_spec
from tests.test_plan import CPU
from workers.judge_set import DHASH_DISTANCE, image_fingerprints, overlaps, wilson_half_width

PHOTOS = sorted(p for p in CALIBRATION_DATA.iterdir() if p.suffix == ".jpg")

SPEC = """
name: t
models: [{{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}]
precisions: [fp32, int8]
backends: {{onnxruntime: {{}}}}
calibration: {{data: {calibration}, samples: 8}}
fidelity: {{data: {judge}, samples: {judged}}}
"""


def folders(tmp_path: Path, judge_photos: list[Path]) -> tuple[Path, Path]:
    """Calibration: the first 8 bundled photos; judge: `judge_photos` copied as they are."""
    calibration, judge = tmp_path / "calibration", tmp_path / "judge"
    calibration.mkdir()
    judge.mkdir()
    for photo in PHOTOS[:8]:
        shutil.copy(photo, calibration / photo.name)
    for photo in judge_photos:
        shutil.copy(photo, judge / photo.name)
    return calibration, judge


def reencoded(source: Path, target: Path, scale: float = 1.0) -> None:
    with Image.open(source) as image:
        rgb = image.convert("RGB")
        if scale != 1.0:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BICUBIC)
        rgb.save(target)


def test_distinct_photos_are_far_apart_and_copies_are_caught(tmp_path: Path) -> None:
    every = image_fingerprints(CALIBRATION_DATA)
    assert len(every) == len(PHOTOS) and not overlaps(every[:18], every[18:])
    reencoded(PHOTOS[2], tmp_path / "coffee.png")  # lossless re-encoding: the same decoded pixels
    reencoded(PHOTOS[4], tmp_path / "cat_small.jpg", scale=0.5)  # resized and JPEG-compressed again
    found = {o.judge: o for o in overlaps(every[:8], image_fingerprints(tmp_path))}
    assert found["coffee.png"].calibration == PHOTOS[2].name and found["coffee.png"].how == "same pixels"
    assert found["cat_small.jpg"].calibration == PHOTOS[4].name and found["cat_small.jpg"].how.startswith("dHash")
    assert int(found["cat_small.jpg"].how.split()[1]) <= DHASH_DISTANCE


def test_a_judge_folder_with_calibration_photos_drops_them_with_one_named_warning(tmp_path: Path) -> None:
    calibration, judge = folders(tmp_path, PHOTOS[20:30])
    reencoded(PHOTOS[1], judge / "zz_goldfish_again.png")
    reencoded(PHOTOS[3], judge / "zz_china_small.jpg", scale=0.6)
    spec_path = write_spec(tmp_path, SPEC.format(calibration=calibration, judge=judge, judged=12))
    spec, base = load_spec(spec_path)
    plan = expand(spec, base, [CPU])

    warnings = [n for n in plan.notes if "not judged" in n]
    assert len(warnings) == 1
    assert "2 judge image(s)" in warnings[0] and "zz_goldfish_again.png" in warnings[0] and "zz_china_small.jpg" in warnings[0]
    assert PHOTOS[1].name in warnings[0] and PHOTOS[3].name in warnings[0]
    assert any(n.startswith("fidelity: 10 judge images: a 95% interval on top-1 agreement is up to ±0.2") for n in plan.notes)

    reference = next(j for j in plan.jobs if isinstance(j, ReferenceJob))
    assert set(reference.data.excluded) == {"zz_goldfish_again.png", "zz_china_small.jpg"}
    inputs, _labels = load_rows(reference.data)
    assert len(inputs) == 10  # the last 12 rows of the judge folder, less the two copies

    # The judged rows are part of the key: without the copies the digest differs, with them it is stable.
    model = spec.models[0]
    assert data_refs(spec, base, model)[1].digest == reference.data.digest
    (judge / "zz_goldfish_again.png").unlink()
    (judge / "zz_china_small.jpg").unlink()
    shutil.copy(PHOTOS[30], judge / PHOTOS[30].name)
    shutil.copy(PHOTOS[31], judge / PHOTOS[31].name)
    clean = data_refs(spec, base, model)[1]
    assert clean.excluded == () and clean.digest != reference.data.digest


def test_a_judge_set_of_only_copies_is_refused(tmp_path: Path) -> None:
    calibration, judge = folders(tmp_path, PHOTOS[:3])
    spec, base = load_spec(write_spec(tmp_path, SPEC.format(calibration=calibration, judge=judge, judged=3)))
    with pytest.raises(SpecError, match="every judge image is a copy of a calibration image"):
        expand(spec, base, [CPU])


def test_a_clean_shared_folder_only_hears_about_its_size(tmp_path: Path) -> None:
    spec, base = load_spec(write_spec(tmp_path, SPEC.format(calibration=CALIBRATION_DATA, judge=CALIBRATION_DATA, judged=16)))
    plan = expand(spec, base, [CPU])
    assert not any("not judged" in n for n in plan.notes)
    assert "fidelity: 16 judge images: a 95% interval on top-1 agreement is up to ±0.22 wide (50 or more give firmer verdicts)" in plan.notes


def test_wilson_width_matches_known_intervals() -> None:
    # Wilson 95% for 8/16 is [0.280, 0.720]; for 25/50, [0.366, 0.634].
    assert wilson_half_width(16) == pytest.approx((0.720 - 0.280) / 2, abs=2e-3)
    assert wilson_half_width(50) == pytest.approx((0.634 - 0.366) / 2, abs=2e-3)
    assert wilson_half_width(200) < wilson_half_width(50) < wilson_half_width(12)


def test_array_rows_that_repeat_calibration_rows_are_not_judged(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    judge = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    judge[3] = calibration[5]  # the same sample, under another file
    np.save(tmp_path / "calibration.npy", calibration)
    np.save(tmp_path / "judge.npy", judge)
    spec, base = load_spec(write_spec(tmp_path, SPEC.format(calibration=tmp_path / "calibration.npy",
                                                            judge=tmp_path / "judge.npy", judged=6)))
    plan = expand(spec, base, [CPU])
    assert any("judge.npy[3] (same pixels as calibration.npy[5])" in n for n in plan.notes)
    reference = next(j for j in plan.jobs if isinstance(j, ReferenceJob))
    inputs, _labels = load_rows(reference.data)
    assert len(inputs) == 5 and not any(np.array_equal(row, calibration[5]) for row in inputs)

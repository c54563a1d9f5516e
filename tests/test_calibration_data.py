"""Calibration and fidelity data: real photos, .npy batches, labels, the split, and every bad case."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from workers import precision, precision_variants
from workers.calibration import (
    CalibrationDataError,
    Samples,
    SamplesReader,
    load_arrays,
    load_images,
    load_labels,
    split,
)
from workers.structs import Preprocess

PHOTOS = Path(__file__).resolve().parent.parent / "calibration_data"
SMALL = Preprocess(resize=40, crop=32)


@pytest.fixture(scope="module")
def photos() -> Samples:
    return load_images(PHOTOS, SMALL)


def test_the_bundled_photos_load(photos: Samples) -> None:
    assert photos.array.shape == (37, 3, 32, 32) and photos.array.dtype == np.float32
    assert photos.files[0] == "01_astronaut.jpg" and photos.skipped == []  # README.md and labels.csv are side files
    assert np.isfinite(photos.array).all() and -3 < photos.array.mean() < 3
    assert len(load_images(PHOTOS, SMALL, limit=5)) == 5


def test_empty_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match=r"the folder is empty"):
        load_images(tmp_path, SMALL)
    with pytest.raises(CalibrationDataError, match=r"not a folder of images"):
        load_images(tmp_path / "missing", SMALL)


def test_folder_without_images_says_so(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "notes.dat").write_text("hello")
    with pytest.raises(CalibrationDataError, match=r"no image files among 2 files"):
        load_images(tmp_path, SMALL)


def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path: Path) -> None:
    for name in ("01_astronaut.jpg", "05_cat.jpg", "09_teacup.jpg"):
        shutil.copy(PHOTOS / name, tmp_path / name)
    whole = (PHOTOS / "13_grace_hopper.jpg").read_bytes()
    (tmp_path / "02_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "03_garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    (tmp_path / "04_data.bin").write_bytes(b"\x01\x02")
    samples = load_images(tmp_path, SMALL)
    assert samples.files == ["01_astronaut.jpg", "05_cat.jpg", "09_teacup.jpg"]
    assert len(samples.skipped) == 3
    assert samples.skipped[0].startswith("02_truncated.jpg: unreadable image") and "truncated" in samples.skipped[0]
    assert samples.skipped[1].startswith("03_garbage.jpg: unreadable image")
    assert samples.skipped[2] == "04_data.bin: not an image file"
    with pytest.raises(CalibrationDataError, match=r"3 usable images, at least 5 needed; 3 skipped, first: 02_truncated.jpg"):
        load_images(tmp_path, SMALL, min_samples=5)


def test_every_skipped_file_is_logged_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 13: a truncated JPEG was skipped silently. The CLI prints these records as warning lines."""
    shutil.copy(PHOTOS / "01_astronaut.jpg", tmp_path / "01_astronaut.jpg")
    whole = (PHOTOS / "13_grace_hopper.jpg").read_bytes()
    (tmp_path / "02_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "03_data.bin").write_bytes(b"\x01")
    with caplog.at_level("WARNING", logger="workers.calibration"):
        load_images(tmp_path, SMALL)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(f"{tmp_path / '02_truncated.jpg'}: skipped, unreadable image (image file is truncated")
    assert messages[1] == f"{tmp_path / '03_data.bin'}: skipped, not an image file"


def test_headers_are_counted_without_decoding(tmp_path: Path) -> None:
    from workers.calibration import count_samples

    shutil.copy(PHOTOS / "01_astronaut.jpg", tmp_path / "01_astronaut.jpg")
    whole = (PHOTOS / "13_grace_hopper.jpg").read_bytes()
    (tmp_path / "02_truncated.jpg").write_bytes(whole[: len(whole) // 2])  # its header reads: counted, skipped when loaded
    (tmp_path / "03_garbage.jpg").write_bytes(b"not a jpeg")
    count = count_samples(tmp_path)
    assert count.samples((3, 32, 32)) == 2 and count.skipped[0].startswith("03_garbage.jpg: unreadable image")
    np.save(tmp_path.parent / "rows.npy", np.zeros((5, 3, 4, 4), np.float32))
    assert count_samples(tmp_path.parent / "rows.npy").samples((3, 4, 4)) == 5
    with pytest.raises(CalibrationDataError, match=r"rows.npy: array of shape \[5, 3, 4, 4\], expected \[N, 3, 8, 8\]"):
        count_samples(tmp_path.parent / "rows.npy").samples((3, 8, 8))


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """Issue 13: convert("RGB") clipped 16-bit grey at 255, so 90% of such a photo turned white."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)  # black to white, evenly
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    plain = Preprocess(resize=64, crop=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pixels = load_images(tmp_path, plain).array[0]
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    assert 0.45 < float(pixels.mean()) < 0.55  # an even ramp averages mid-grey
    assert float((pixels >= 0.999).mean()) < 0.05  # clipped, about 99% of it was white
    assert np.allclose(pixels[0], pixels[1]) and np.allclose(pixels[1], pixels[2])  # grey stays grey


def test_split_is_disjoint_deterministic_and_keeps_the_held_out_part(photos: Samples) -> None:
    calibration, held_out = split(photos, 16, 5)
    assert len(calibration) == 16 and len(held_out) == 5
    assert not set(calibration.files) & set(held_out.files)
    assert held_out.files == photos.files[-5:]
    again_calibration, again_held_out = split(photos, 16, 5)
    assert again_calibration.files == calibration.files and np.array_equal(again_held_out.array, held_out.array)
    # More calibration samples, same held-out inputs: variants stay comparable.
    assert split(photos, 32, 5)[1].files == held_out.files
    rest = split(photos, 30)[1]
    assert len(rest) == 7 and not set(rest.files) & set(photos.files[:30])


def test_split_refuses_too_few_samples(photos: Samples) -> None:
    with pytest.raises(CalibrationDataError, match=r"37 usable samples cannot give 32 for calibration and 8 held out"):
        split(photos, 32, 8)
    with pytest.raises(CalibrationDataError, match=r"cannot give 37 for calibration and 0 held out"):
        split(photos, 37)
    with pytest.raises(CalibrationDataError):
        split(photos, 0, 5)


def test_split_carries_labels(photos: Samples) -> None:
    labelled = Samples(photos.array, photos.files, labels=np.arange(len(photos)))
    calibration, held_out = split(labelled, 10, 4)
    assert calibration.labels is not None and held_out.labels is not None
    assert list(held_out.labels) == [33, 34, 35, 36] and list(calibration.labels) == list(range(10))


def test_arrays_from_npy_npz_and_folders(tmp_path: Path) -> None:
    batch = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float64)
    np.save(tmp_path / "batch.npy", batch)
    loaded = load_arrays(tmp_path / "batch.npy", (1, 8, 8))
    assert loaded.array.dtype == np.float32 and loaded.array.shape == (6, 1, 8, 8)
    assert loaded.files[2] == "batch.npy[2]" and np.allclose(loaded.array, batch)
    np.savez(tmp_path / "one.npz", inputs=batch[:3])
    assert load_arrays(tmp_path / "one.npz", (1, 8, 8)).array.shape == (3, 1, 8, 8)
    assert load_arrays(tmp_path / "batch.npy", (1, "height", "width")).array.shape == (6, 1, 8, 8)

    folder = tmp_path / "folder"
    folder.mkdir()
    np.save(folder / "a.npy", batch[:2])
    np.save(folder / "b.npy", batch[2])  # one sample without the batch axis
    (folder / "c.npy").write_bytes(b"corrupt")
    (folder / "README.md").write_text("side file")
    from_folder = load_arrays(folder, (1, 8, 8))
    assert from_folder.files == ["a.npy[0]", "a.npy[1]", "b.npy[0]"]
    assert len(from_folder.skipped) == 1 and from_folder.skipped[0].startswith("c.npy:")


def test_wrong_shape_arrays_name_the_file_and_both_shapes(tmp_path: Path) -> None:
    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(CalibrationDataError, match=r"rgb.npy: array of shape \[4, 3, 8, 8\], expected \[N, 1, 8, 8\]"):
        load_arrays(tmp_path / "rgb.npy", (1, 8, 8))
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 1, 8, 8)), b=np.zeros((1, 1, 8, 8)))
    with pytest.raises(CalibrationDataError, match=r"two.npz: an .npz must hold exactly one array, found 2 \(a, b\)"):
        load_arrays(tmp_path / "two.npz", (1, 8, 8))
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.save(folder / "good.npy", np.zeros((2, 1, 8, 8)))
    np.save(folder / "flat.npy", np.zeros((2, 64)))
    with pytest.raises(CalibrationDataError, match=r"flat.npy: array of shape \[2, 64\], expected \[N, 1, 8, 8\]"):
        load_arrays(folder, (1, 8, 8))
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with pytest.raises(CalibrationDataError, match=r"words.npy: dtype <U1 is not numeric"):
        load_arrays(tmp_path / "words.npy", (1, 8, 8))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationDataError, match=r"the folder is empty"):
        load_arrays(empty, (1, 8, 8))


def test_labels_as_ids_names_or_descriptions(tmp_path: Path) -> None:
    files = ["a.jpg", "b.jpg", "c.jpg"]
    (tmp_path / "ids.csv").write_text("file,label\na.jpg,3\nc.jpg,7\n")
    assert list(load_labels(tmp_path / "ids.csv", files)) == [3, -1, 7]  # type: ignore[arg-type]
    (tmp_path / "names.csv").write_text("file,label\na.jpg,Goldfish\nb.jpg,tabby cat\nc.jpg,astronaut\n")
    mapped = load_labels(tmp_path / "names.csv", files, class_names=["tench", "goldfish", "tabby cat"])
    assert list(mapped) == [1, 2, -1]  # type: ignore[arg-type]
    assert load_labels(tmp_path / "names.csv", files) is None  # names and no class list: not class ids
    (tmp_path / "bad.csv").write_text("file,label\na.jpg\n")
    with pytest.raises(CalibrationDataError, match=r"bad.csv: row 2 is not 'file,label'"):
        load_labels(tmp_path / "bad.csv", files)


def test_the_bundled_descriptive_labels_are_not_class_ids(photos: Samples) -> None:
    assert load_labels(PHOTOS / "labels.csv", photos.files) is None


def test_labels_for_npy_rows(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,label\nholdout.npy[0],4\nholdout.npy[1],9\n")
    assert list(load_labels(tmp_path / "labels.csv", ["holdout.npy[0]", "holdout.npy[1]", "other.npy[0]"])) == [4, 9, -1]  # type: ignore[arg-type]


def test_reader_batches_rewinds_and_feeds_the_calibrator(photos: Samples) -> None:
    from onnxruntime.quantization import CalibrationDataReader

    reader = SamplesReader(photos, "input", batch_size=16)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 3
    sizes = [len(batch["input"]) for batch in reader]
    assert sizes == [16, 16, 5] and reader.get_next() is None
    reader.rewind()
    first = reader.get_next()
    assert first is not None and np.array_equal(first["input"], photos.array[:16])
    with pytest.raises(ValueError, match="batch_size"):
        SamplesReader(photos, "input", batch_size=0)


def test_calibration_counts_the_samples_it_saw(photos: Samples) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"]), helper.make_node("Relu", ["conv"], ["output"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 32, 32])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.linspace(-1, 1, 12).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    reader = SamplesReader(split(photos, 12, 5)[0], "input", batch_size=5)
    ranges = precision_variants.calibrate(model, reader, "minmax")
    assert ranges.samples == 12
    assert precision_variants.calibrate(model, reader, "minmax").samples == 12  # rewound, not exhausted
    with pytest.raises(precision.QuantizationError, match="no samples"):
        precision_variants.calibrate(model, SamplesReader(np.zeros((0, 3, 32, 32), np.float32), "input"), "minmax")

"""Box-level fidelity on real Faster R-CNN detections, and on hand-made boxes where the answer is known.

One forward pass of torchvision's Faster R-CNN ResNet50-FPN (random weights, so nothing is
downloaded; 320 px; score threshold lowered so random weights still give boxes) on a real photo
gives the reference list; variants of it stand in for a quantized detector's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.detection import DetectionFidelity, Detections, box_iou, compare_detections, match

PHOTO = Path(__file__).resolve().parent.parent / "calibration_data" / "05_cat.jpg"


@pytest.fixture(scope="module")
def reference() -> list[Detections]:
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=320, max_size=320, box_score_thresh=0.05, box_detections_per_img=50
    ).eval()
    with Image.open(PHOTO) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        out = model([pixels])[0]
    found = Detections.of(out["boxes"], out["labels"], out["scores"])
    assert len(found.scores) >= 10, "random weights gave too few boxes to test with"
    return [found]


def changed(d: Detections, *, boxes: np.ndarray | None = None, labels: np.ndarray | None = None, scores: np.ndarray | None = None) -> Detections:
    return Detections(d.boxes if boxes is None else boxes, d.labels if labels is None else labels, d.scores if scores is None else scores)


def test_reference_against_itself_is_perfect(reference: list[Detections]) -> None:
    result = compare_detections(reference, reference, score_threshold=0.0)
    assert result.matched == result.reference_boxes == len(reference[0].scores)
    assert (result.recall, result.precision, result.score_diff_max, result.iou_mean) == (1.0, 1.0, 0.0, pytest.approx(1.0))


def test_slightly_shifted_boxes_still_match(reference: list[Detections]) -> None:
    d = reference[0]
    width = d.boxes[:, 2:3] - d.boxes[:, 0:1]
    shifted = d.boxes + np.hstack([width * 0.05, np.zeros_like(width), width * 0.05, np.zeros_like(width)])
    result = compare_detections(reference, [changed(d, boxes=shifted)], score_threshold=0.0)
    assert result.recall == result.precision == 1.0
    assert 0.85 < result.iou_mean < 0.95  # a 5% horizontal shift gives IoU 0.95 / 1.05 = 0.905


def test_boxes_moved_away_do_not_match(reference: list[Detections]) -> None:
    d = reference[0]
    far = d.boxes + 1000.0
    result = compare_detections(reference, [changed(d, boxes=far)], score_threshold=0.0)
    assert result.matched == 0 and result.recall == 0.0 and result.precision == 0.0 and result.iou_mean == 0.0


def test_dropped_boxes_lower_recall_only(reference: list[Detections]) -> None:
    d = reference[0]
    keep = np.arange(len(d.scores)) % 2 == 0
    result = compare_detections(reference, [Detections(d.boxes[keep], d.labels[keep], d.scores[keep])], score_threshold=0.0)
    assert result.precision == 1.0 and result.recall == pytest.approx(keep.sum() / len(keep))


def test_changed_scores_are_measured(reference: list[Detections]) -> None:
    d = reference[0]
    result = compare_detections(reference, [changed(d, scores=d.scores * 0.9)], score_threshold=0.0)
    assert result.recall == 1.0
    assert result.score_diff_mean == pytest.approx(float(np.mean(d.scores * 0.1)))
    assert result.score_diff_max == pytest.approx(float(np.max(d.scores * 0.1)))


def test_a_different_label_is_not_a_match(reference: list[Detections]) -> None:
    d = reference[0]
    result = compare_detections(reference, [changed(d, labels=d.labels + 1)], score_threshold=0.0)
    assert result.matched == 0


def test_score_threshold_filters_both_lists(reference: list[Detections]) -> None:
    d = reference[0]
    cut = float(np.median(d.scores))
    result = compare_detections(reference, reference, score_threshold=cut)
    assert result.reference_boxes == result.candidate_boxes == int((d.scores >= cut).sum()) < len(d.scores)
    # A candidate whose scores fell below the threshold has found nothing.
    faded = compare_detections(reference, [changed(d, scores=d.scores * 0.0)], score_threshold=cut)
    assert faded.candidate_boxes == 0 and faded.recall == 0.0 and faded.precision == 1.0


def test_matching_is_one_to_one_best_overlap_first() -> None:
    ref = Detections.of([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.8])
    # Two candidates on the first reference box: only the better one matches; the worse one is spurious.
    cand = Detections.of([[1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [1, 1, 1], [0.95, 0.6, 0.7])
    assert match(ref, cand) == [(0, 1, 1.0)]
    result = compare_detections([ref], [cand], score_threshold=0.5)
    assert isinstance(result, DetectionFidelity)
    assert (result.matched, result.recall, result.precision) == (1, 0.5, pytest.approx(1 / 3))
    assert result.score_diff_max == pytest.approx(0.3)


def test_iou_of_known_boxes() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    assert np.allclose(box_iou(a, b), [[1 / 3, 0.0], [0.0, 0.0]])
    assert box_iou(a[:0], b).shape == (0, 2)


def test_empty_lists_and_shape_errors() -> None:
    empty = Detections.of(np.zeros((0, 4)), [], [])
    both_empty = compare_detections([empty], [empty])
    assert (both_empty.recall, both_empty.precision, both_empty.matched) == (1.0, 1.0, 0)
    with pytest.raises(ValueError, match="candidate images against"):
        compare_detections([empty], [])
    with pytest.raises(ValueError, match="expected"):
        Detections(np.zeros((2, 4)), np.zeros(3, dtype=np.int64), np.zeros(2))

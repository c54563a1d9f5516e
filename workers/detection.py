"""Box-level fidelity for detectors (Faster R-CNN and alike): does a variant find the fp32 boxes?

Per image, both box lists are cut at `score_threshold`, then pairs with the same label are matched
greedily by IoU, best overlap first, each box at most once, a pair counting only at IoU >= `iou`.
Best-overlap-first (not score order, as COCO evaluation does) because neither list is ground
truth: the question is which boxes correspond, and a small score change must not reorder the matching.
Recall is matched / reference boxes, precision matched / candidate boxes; each is 1.0 when its
denominator is 0 (nothing to miss, nothing spurious).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes [N, 4] as (x1, y1, x2, y2), labels [N], scores [N]."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.labels.shape != (n,) or self.scores.shape != (n,):
            raise ValueError(f"detections: boxes {self.boxes.shape}, labels {self.labels.shape}, scores {self.scores.shape}; expected [N, 4], [N], [N]")

    @staticmethod
    def of(boxes: object, labels: object, scores: object) -> Detections:
        """From arrays or tensors (torchvision's output dict values, or an ONNX model's three outputs)."""
        return Detections(
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64).reshape(-1),
            np.asarray(scores, dtype=np.float64).reshape(-1),
        )

    def above(self, score_threshold: float) -> Detections:
        keep = self.scores >= score_threshold
        return Detections(self.boxes[keep], self.labels[keep], self.scores[keep])


@dataclass(frozen=True)
class DetectionFidelity:
    images: int
    reference_boxes: int
    candidate_boxes: int
    matched: int
    recall: float  # matched / reference boxes
    precision: float  # matched / candidate boxes
    score_diff_mean: float  # absolute score difference over matched pairs (0 when none matched)
    score_diff_max: float
    iou_mean: float  # over matched pairs (0 when none matched)
    iou: float  # the thresholds this was measured with
    score_threshold: float
    per_image: tuple[tuple[int, int], ...] = ()  # per image: (reference boxes, of them matched)


def compare_detections(
    reference: Sequence[Detections], candidate: Sequence[Detections], iou: float = 0.5, score_threshold: float = 0.5
) -> DetectionFidelity:
    """Match the candidate's boxes to the reference's image by image and summarise the agreement."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} candidate images against {len(reference)} reference images")
    n_ref = n_cand = 0
    score_diffs: list[float] = []
    ious: list[float] = []
    per_image: list[tuple[int, int]] = []
    for ref, cand in zip(reference, candidate, strict=True):
        ref, cand = ref.above(score_threshold), cand.above(score_threshold)
        n_ref += len(ref.scores)
        n_cand += len(cand.scores)
        pairs = match(ref, cand, iou)
        per_image.append((len(ref.scores), len(pairs)))
        for i, j, overlap in pairs:
            score_diffs.append(abs(float(ref.scores[i]) - float(cand.scores[j])))
            ious.append(overlap)
    matched = len(ious)
    return DetectionFidelity(
        images=len(reference),
        reference_boxes=n_ref,
        candidate_boxes=n_cand,
        matched=matched,
        recall=matched / n_ref if n_ref else 1.0,
        precision=matched / n_cand if n_cand else 1.0,
        score_diff_mean=float(np.mean(score_diffs)) if score_diffs else 0.0,
        score_diff_max=float(np.max(score_diffs)) if score_diffs else 0.0,
        iou_mean=float(np.mean(ious)) if ious else 0.0,
        iou=iou,
        score_threshold=score_threshold,
        per_image=tuple(per_image),
    )


def match(reference: Detections, candidate: Detections, iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching: (reference index, candidate index, IoU), best overlap first."""
    overlaps = box_iou(reference.boxes, candidate.boxes)
    overlaps[reference.labels[:, None] != candidate.labels[None, :]] = -1.0
    pairs: list[tuple[int, int, float]] = []
    used_ref: set[int] = set()
    used_cand: set[int] = set()
    for flat in np.argsort(-overlaps, axis=None, kind="stable"):
        i, j = divmod(int(flat), overlaps.shape[1])
        value = float(overlaps[i, j])
        if value < iou:
            break
        if i in used_ref or j in used_cand:
            continue
        used_ref.add(i)
        used_cand.add(j)
        pairs.append((i, j, value))
    return pairs


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [len(a), len(b)]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)

"""How close a build's outputs are to the fp32 reference on the same real inputs.

Classifiers: top-1 / top-5 agreement, cosine similarity and max abs error against the reference,
plus labelled accuracy where labels exist. Detectors: workers.detection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


# Mean cosine this far below the fake-quant arithmetic of the same Q/DQ graph means the backend's
# kernels, not the quantization, lose the accuracy (ONNX Runtime's int8 on x86 without VNNI gave a
# mobile classifier 0.69 against 0.975).
KERNEL_GAP = 0.01


@dataclass(frozen=True)
class Fidelity:
    samples: int
    top1_agreement: float  # share of samples whose arg-max class equals the reference's
    top5_agreement: float  # share of samples whose reference top-1 class is in the candidate's top 5
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    accuracy: float | None = None  # the candidate's top-1 accuracy on the labelled samples, when labels were given
    reference_accuracy: float | None = None  # the reference's, on the same samples
    labelled: int = 0  # how many samples had a known label
    nonfinite: int = 0  # samples whose candidate or reference output holds NaN or inf (counted as wrong)


def run_batched(infer: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run `infer` over `inputs` in chunks no larger than the engine's batch profile allows."""
    chunks = [infer(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(chunks, axis=0)


def run_padded(infer: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """Run `infer` only at batch sizes in `sizes`: chunks of the smallest one that holds every input
    (else the largest), the last chunk padded with copies of its last input, padded rows dropped.

    For engines where a new batch size is a new compile (16 judge images on an engine compiled for
    256 autotuned for minutes); rows are independent at inference, so padding changes no real row.
    """
    size = min((s for s in sizes if s >= len(inputs)), default=max(sizes))
    chunks = []
    for i in range(0, len(inputs), size):
        chunk = inputs[i : i + size]
        real = len(chunk)
        if real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
        chunks.append(infer(chunk)[:real])
    return np.concatenate(chunks, axis=0)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> Fidelity:
    """Compare classifier outputs [N, classes] (logits or probabilities) against the reference.

    With `labels` (class id per sample, negative for unknown) both outputs' accuracy is reported too.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {candidate.shape} differs from the reference {reference.shape}")
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    # A NaN or inf output is a wrong answer, never a perfect one: such rows disagree and score cosine 0.
    finite = np.asarray(np.isfinite(ref).all(axis=1) & np.isfinite(cand).all(axis=1))
    ref, cand = np.where(finite[:, None], ref, 0.0), np.where(finite[:, None], cand, 0.0)
    ref_top1 = ref.argmax(axis=1)
    k = min(5, cand.shape[1])
    cand_top5 = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    ref_norm, cand_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    both = (ref_norm > 0) & (cand_norm > 0)
    cosine = np.where(both, (ref * cand).sum(axis=1) / np.maximum(ref_norm * cand_norm, 1e-300), 0.0)
    # Two all-zero outputs agree; an all-zero output against a non-zero one does not.
    cosine = np.where(finite & ~both, (ref_norm == cand_norm).astype(np.float64), np.where(finite, cosine, 0.0))
    labelled = 0 if labels is None else int((np.asarray(labels) >= 0).sum())
    return Fidelity(
        samples=len(ref),
        top1_agreement=float(((cand.argmax(axis=1) == ref_top1) & finite).mean()),
        top5_agreement=float(((cand_top5 == ref_top1[:, None]).any(axis=1) & finite).mean()),
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        max_abs_error=float(np.abs(ref - cand).max()) if finite.all() else float("inf"),
        accuracy=accuracy(candidate, labels) if labels is not None and labelled else None,
        reference_accuracy=accuracy(reference, labels) if labels is not None and labelled else None,
        labelled=labelled,
        nonfinite=int((~finite).sum()),
    )


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of classifier outputs [N, classes] over the samples whose label is known (>= 0).

    A row holding NaN or inf counts as wrong.
    """
    scores = outputs.reshape(len(outputs), -1)
    truth = np.asarray(labels).reshape(-1)
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} labels for {len(scores)} outputs")
    known = truth >= 0
    if not known.any():
        raise ValueError("no sample has a known label")
    correct = (scores.argmax(axis=1) == truth) & np.isfinite(scores).all(axis=1)
    return float(correct[known].mean())

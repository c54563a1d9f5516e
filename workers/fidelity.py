"""How close a build's outputs are to the fp32 reference on the same real inputs.

Classifiers: top-1 / top-5 agreement (and which images flipped, with the reference's own softmax
margin on each: a flip where fp32 itself could hardly choose is not a flip where it was sure), cosine
similarity, KL divergence and max abs error against the reference, plus labelled accuracy where
labels exist. Detectors: workers.detection.

The reference itself is checked too (`degenerate`): logits that half precision cannot tell apart, or
outputs that are the same for every image, make every agreement number meaningless. And `shifted`
gives the harmless perturbation the reference is run under to measure fp32's own noise floor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


# Mean cosine this far below the fake-quant arithmetic of the same Q/DQ graph means the backend's
# kernels, not the quantization, lose the accuracy (ONNX Runtime's int8 on x86 without VNNI gave a
# mobile classifier 0.69 against 0.975).
KERNEL_GAP = 0.01
# A reference row whose logits span less than this share of their magnitude (fp16 keeps about three
# decimal digits), or less than fp16's smallest normal, cannot be told apart in half precision.
RESOLUTION = 1e-3
FP16_SMALLEST_NORMAL = 6.103515625e-05
DEGENERATE = "reference degenerate: fidelity not meaningful"
SHIFT_PIXELS = 2  # the noise floor's perturbation: the image content moved this far, edges repeated
# Narrower images get no noise floor: 2 pixels of a 32-pixel digit is no longer a change a classifier should ignore.
SHIFT_MIN_WIDTH = 64


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
    agreed: int = 0  # samples whose top-1 class agrees: top1_agreement = agreed / samples
    kl_mean: float = 0.0  # KL(reference softmax || candidate softmax), mean over samples (inf with a non-finite one)
    flipped: tuple[int, ...] = ()  # indices of the samples whose top-1 class differs from the reference's
    reference_margins: tuple[float, ...] = ()  # per sample: the reference's softmax p1 - p2
    reference_note: str | None = None  # why the reference cannot judge anything (degenerate), else None


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
    agrees = (cand.argmax(axis=1) == ref_top1) & finite
    ref_log, cand_log = log_softmax(ref), log_softmax(cand)
    kl = (np.exp(ref_log) * (ref_log - cand_log)).sum(axis=1)
    return Fidelity(
        samples=len(ref),
        top1_agreement=float(agrees.mean()),
        top5_agreement=float(((cand_top5 == ref_top1[:, None]).any(axis=1) & finite).mean()),
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        max_abs_error=float(np.abs(ref - cand).max()) if finite.all() else float("inf"),
        accuracy=accuracy(candidate, labels) if labels is not None and labelled else None,
        reference_accuracy=accuracy(reference, labels) if labels is not None and labelled else None,
        labelled=labelled,
        nonfinite=int((~finite).sum()),
        agreed=int(agrees.sum()),
        kl_mean=float(kl.mean()) if finite.all() else float("inf"),
        flipped=tuple(int(i) for i in np.flatnonzero(~agrees)),
        reference_margins=tuple(round(float(m), 6) for m in margins(ref)),
        reference_note=degenerate(reference),
    )


def log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def margins(scores: np.ndarray) -> np.ndarray:
    """Per row, the softmax probability of the top class less that of the second (1.0 with one class)."""
    if scores.shape[1] < 2:
        return np.ones(len(scores))
    probabilities = np.exp(log_softmax(scores))
    top2 = -np.partition(-probabilities, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def degenerate(reference: np.ndarray) -> str | None:
    """Why these reference outputs [N, ...] cannot judge a candidate, or None when they can.

    Non-finite outputs; logits whose spread per image is below what fp16/bf16 resolve (random-weight
    efficientnet_b0 gives logits around 3e-14: in fp16 every one rounds to zero); or the same output
    for every image (a network that ignores its input).
    """
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    if len(ref) == 0:
        return None
    bad = int((~np.isfinite(ref).all(axis=1)).sum())
    if bad:
        return f"{DEGENERATE} (fp32 outputs are NaN or inf on {bad} of {len(ref)} images)"
    spread = ref.max(axis=1) - ref.min(axis=1)
    floor = np.maximum(FP16_SMALLEST_NORMAL, RESOLUTION * np.abs(ref).max(axis=1))
    if ref.shape[1] > 1 and (spread < floor).all():
        return (f"{DEGENERATE} (fp32 logits span at most {spread.max():.3g} per image, below what fp16/bf16 can "
                "resolve: every class looks alike)")
    if len(ref) > 1 and np.allclose(ref, ref[0], rtol=1e-6, atol=FP16_SMALLEST_NORMAL):
        return f"{DEGENERATE} (fp32 outputs are the same for all {len(ref)} images)"
    return None


def shifted(inputs: np.ndarray, pixels: int = SHIFT_PIXELS) -> np.ndarray | None:
    """The images [N, C, H, W] (or [N, H, W]) with their content moved `pixels` to the right, the left
    edge repeated: a change no classifier should care about. None for inputs that are not images, or
    images narrower than SHIFT_MIN_WIDTH."""
    if inputs.ndim < 3 or inputs.shape[-1] < SHIFT_MIN_WIDTH:
        return None
    moved = np.empty_like(inputs)
    moved[..., pixels:] = inputs[..., :-pixels]
    moved[..., :pixels] = inputs[..., :1]
    return moved


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

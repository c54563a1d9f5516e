"""How close a build's outputs are to the fp32 reference on the same real inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    samples: int
    top1_agreement: float  # share of samples whose arg-max class equals the reference's
    top5_agreement: float  # share of samples whose reference top-1 class is in the candidate's top 5
    cosine_mean: float
    cosine_min: float
    max_abs_error: float


def run_batched(infer: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run `infer` over `inputs` in chunks no larger than the engine's batch profile allows."""
    chunks = [infer(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(chunks, axis=0)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Fidelity:
    """Compare classifier outputs [N, classes] (logits or probabilities) against the reference."""
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {candidate.shape} differs from the reference {reference.shape}")
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    ref_top1 = ref.argmax(axis=1)
    k = min(5, cand.shape[1])
    cand_top5 = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
    return Fidelity(
        samples=len(ref),
        top1_agreement=float((cand.argmax(axis=1) == ref_top1).mean()),
        top5_agreement=float((cand_top5 == ref_top1[:, None]).any(axis=1).mean()),
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        max_abs_error=float(np.abs(ref - cand).max()),
    )

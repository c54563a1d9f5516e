"""The accuracy half of a verdict, with its evidence (docs/verdicts.md, "Eligibility from evidence").

A fidelity row says how many of the judge images kept fp32's top-1 class (k of n, with a 95%
Wilson interval), which images flipped and how sure fp32 itself was on each (its softmax margin
p1 - p2), and the reference row says how much fp32 disagrees with itself when every image moves by
2 pixels: the noise floor. `Evidence` reads both, and `rule` decides eligibility from them:

- **evidence** (the default): no *confident* flip (an image where fp32's margin is at least
  `confident_margin`, 0.1, and which fp32's own shifted run did not flip too), and the Wilson upper
  bound of the agreement reaches `min_top1_agreement`, or the candidate disagrees on no more images
  than fp32 does with itself;
- **threshold**: the bare share against `min_top1_agreement`, as before.

Either way a candidate with NaN or inf outputs is never eligible, and a degenerate reference (logits
half precision cannot resolve, the same output for every image) judges nothing: its model's answer is
a speed result over the candidates with finite outputs, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from workers.stats import McNemar, Top1Rule, blamed_flips, paired, top1_rule, wilson

Rule = Literal["evidence", "threshold"]
RULES: tuple[Rule, ...] = ("evidence", "threshold")
CONFIDENT_MARGIN = 0.1
# In fidelity keys: rows measured before fidelity stored its evidence (counts, flips, margins) are measured again.
EVIDENCE_VERSION = 1


@dataclass(frozen=True)
class NoiseFloor:
    """fp32 against itself on the same images under a perturbation that should not matter."""

    perturbation: str
    samples: int  # images, or reference boxes for a detector
    agreed: int
    flipped: tuple[int, ...] = ()  # images fp32 itself changed its mind on
    cosine_mean: float | None = None

    @property
    def disagreed(self) -> int:
        return self.samples - self.agreed

    @staticmethod
    def of(stored: dict[str, Any] | None) -> NoiseFloor | None:
        if not stored:
            return None
        if "matched" in stored:  # a detector's box agreement
            return NoiseFloor(stored.get("perturbation", ""), int(stored["reference_boxes"]), int(stored["matched"]))
        return NoiseFloor(stored.get("perturbation", ""), int(stored["samples"]), int(stored["agreed"]),
                          tuple(stored.get("flipped") or ()), stored.get("cosine_mean"))

    def to_json(self) -> dict[str, Any]:
        low, high = wilson(self.agreed, self.samples)
        return {"perturbation": self.perturbation, "agreed": self.agreed, "samples": self.samples,
                "interval": [round(low, 4), round(high, 4)], "flipped": list(self.flipped), "cosine_mean": self.cosine_mean,
                "text": self.describe()}

    def describe(self) -> str:
        low, high = wilson(self.agreed, self.samples)
        cosine = f", cosine {self.cosine_mean:.4f}" if self.cosine_mean is not None else ""
        return f"fp32 under a {self.perturbation}: {self.agreed}/{self.samples} [{low:.2f}, {high:.2f}]{cosine}"


@dataclass(frozen=True)
class Evidence:
    """One build's fidelity as counts and per-image detail (top-1 for classifiers, box recall for detectors)."""

    metric: str  # "top-1" or "box recall"
    samples: int  # n: judge images (classifiers) or reference boxes (detectors)
    agreed: int  # k
    flipped: tuple[int, ...] = ()  # images whose top-1 class differs from fp32's
    margins: tuple[float, ...] = ()  # per image: fp32's softmax p1 - p2
    nonfinite: int = 0
    reference_note: str | None = None  # the reference is degenerate: nothing here judges accuracy
    noise: NoiseFloor | None = None
    cosine_mean: float | None = None
    kl_mean: float | None = None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.agreed, self.samples)

    def confident_flips(self, margin: float = CONFIDENT_MARGIN) -> list[int]:
        """Flipped images on which fp32 was sure (its margin at least `margin`)."""
        return blamed_flips(self.flipped, self.margins, margin)

    def rule(self, floor: float, margin: float = CONFIDENT_MARGIN) -> Top1Rule:
        """The evidence rule (workers.stats.top1_rule) on these counts, with fp32's noise floor where it was
        measured on as many images (boxes)."""
        noise = self.noise if self.noise is not None and self.noise.samples == self.samples else None
        return top1_rule(self.agreed, self.samples, self.flipped, self.margins, floor, margin,
                         noise_flipped=self.noise.flipped if self.noise is not None else (),
                         noise_disagreed=noise.disagreed if noise is not None else None)

    def blamed_flips(self, margin: float = CONFIDENT_MARGIN) -> list[int]:
        """Confident flips that fp32's own shifted run did not make too: the ones the candidate is to blame for."""
        return list(self.rule(1.0, margin).blamed)

    def within_noise(self) -> bool:
        """It disagrees with fp32 on no more images (boxes) than fp32 does with itself: not worse than fp32."""
        return self.rule(1.0).within_noise

    def versus(self, other: Evidence) -> McNemar | None:
        """The paired test of this build's agreement against another's on the same images (None: not comparable)."""
        if self.metric != "top-1" or other.metric != "top-1" or self.samples != other.samples or not self.margins or not other.margins:
            return None
        return paired(self.flipped, other.flipped, self.samples)

    def describe(self, margin: float = CONFIDENT_MARGIN) -> str:
        """`top-1 21/24 [0.69, 0.96], 2 confident flips`: what a table cell says."""
        low, high = self.interval
        text = f"{self.metric} {self.agreed}/{self.samples} [{low:.2f}, {high:.2f}]"
        if self.metric == "top-1" and self.margins:
            confident = len(self.confident_flips(margin))
            text += f", {confident} confident flip{'s' if confident != 1 else ''}"
        if self.nonfinite:
            text += f", {self.nonfinite} non-finite"
        return text

    def to_json(self, margin: float = CONFIDENT_MARGIN) -> dict[str, Any]:
        low, high = self.interval
        return {"metric": self.metric, "agreed": self.agreed, "samples": self.samples, "interval": [round(low, 4), round(high, 4)],
                "flips": len(self.flipped), "confident_flips": len(self.confident_flips(margin)), "confident_margin": margin,
                "flipped": [{"image": i, "reference_margin": self.margins[i] if i < len(self.margins) else None} for i in self.flipped],
                "nonfinite": self.nonfinite, "cosine_mean": self.cosine_mean, "kl_mean": self.kl_mean,
                "reference_note": self.reference_note, "noise_floor": None if self.noise is None else self.noise.to_json(),
                "within_noise_floor": self.within_noise()}


@dataclass(frozen=True)
class Flip:
    """One judge image whose top-1 class the build changed, with how sure fp32 was of its own class there."""

    image: int  # index into the judge set
    reference_margin: float | None  # fp32's softmax p1 - p2 on it (None: recorded without margins)
    confident: bool  # the margin reaches the confident margin: a flip the evidence rule counts
    reference_flips_too: bool  # fp32 itself flipped it under the noise floor's perturbation: not the build's fault


def flips_of(detail: dict[str, Any] | None, noise_floor: dict[str, Any] | None = None, margin: float = CONFIDENT_MARGIN) -> list[Flip]:
    """The flipped images of a fidelity row's stored evidence ({"flipped": [i], "margins": [p1-p2 per image]}),
    surest first."""
    detail = detail or {}
    margins = list(detail.get("margins") or ())
    noise = NoiseFloor.of(noise_floor)
    noisy = set(noise.flipped) if noise is not None else set()
    found = [Flip(int(i), margins[i] if i < len(margins) else None, i < len(margins) and margins[i] >= margin, i in noisy)
             for i in detail.get("flipped") or ()]
    return sorted(found, key=lambda f: -(f.reference_margin or 0.0))


# The fidelity row's columns evidence is read from (farm.store.schema.Fidelity).
COLUMNS = ("samples", "agreed", "evidence", "reference_note", "box_recall", "reference_boxes", "nonfinite", "cosine_mean", "kl_mean")


def columns_of(row: Any) -> dict[str, Any] | None:
    """The evidence columns of a stored fidelity row (None for no row)."""
    return None if row is None else {name: getattr(row, name) for name in COLUMNS}


def evidence_of(fidelity: dict[str, Any] | None, noise_floor: dict[str, Any] | None = None,
                reference_note: str | None = None) -> Evidence | None:
    """Evidence from a fidelity row's columns (columns_of); None for a row recorded before evidence
    was (no counts: such a build is judged by the bare threshold)."""
    if fidelity is None or fidelity.get("agreed") is None:
        return None
    detail = fidelity.get("evidence") or {}
    noise = NoiseFloor.of(noise_floor)
    note = fidelity.get("reference_note") or reference_note
    nonfinite = int(fidelity.get("nonfinite") or 0)
    if fidelity.get("box_recall") is not None:
        return Evidence("box recall", int(fidelity.get("reference_boxes") or 0), int(fidelity["agreed"]), nonfinite=nonfinite,
                        reference_note=note, noise=noise)
    return Evidence("top-1", int(fidelity.get("samples") or 0), int(fidelity["agreed"]), tuple(detail.get("flipped") or ()),
                    tuple(detail.get("margins") or ()), nonfinite, note, noise, fidelity.get("cosine_mean"), fidelity.get("kl_mean"))


@dataclass(frozen=True)
class Judged:
    """What the rule found of one candidate: its reasons to be excluded (empty: eligible)."""

    missed: list[str] = field(default_factory=list)
    speed_only: bool = False  # a degenerate reference: eligible by finite outputs alone

    @property
    def eligible(self) -> bool:
        return not self.missed


def judge(evidence: Evidence | None, floor: float | None, rule: Rule, margin: float, *, fallback_share: float | None = None,
          nonfinite: int = 0) -> Judged:
    """The agreement part of eligibility (min_cosine and max_accuracy_drop are farm.results.select's)."""
    bad = evidence.nonfinite if evidence is not None else nonfinite
    if bad:
        of = f" of {evidence.samples}" if evidence is not None and evidence.metric == "top-1" else ""
        return Judged([f"NaN or inf outputs on {bad}{of} images"])
    if evidence is not None and evidence.reference_note:
        return Judged([], speed_only=True)
    if floor is None:
        return Judged()
    if rule == "threshold" or evidence is None:
        share = fallback_share if evidence is None else evidence.agreed / evidence.samples if evidence.samples else None
        if share is None or share < floor:
            return Judged([f"{evidence.metric if evidence else 'top-1'} agreement {_round(share)} < {floor}"
                           + (f" ({evidence.describe(margin)})" if evidence is not None else "")])
        return Judged()
    missed = []
    found = evidence.rule(floor, margin)
    if found.blamed:
        missed.append(f"{len(found.blamed)} confident flip{'s' if len(found.blamed) != 1 else ''} (fp32 margin >= {margin})")
    low, high = found.interval
    if not found.reaches_floor:
        noise = f"; {evidence.noise.describe()}" if evidence.noise is not None else ""
        missed.append(f"{evidence.metric} {evidence.agreed}/{evidence.samples} [{low:.2f}, {high:.2f}]: upper bound below {floor}{noise}")
    return Judged(missed)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)

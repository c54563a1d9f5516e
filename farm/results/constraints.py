"""What a build must meet to win (Model Analyzer's constraints): fidelity floors and the rule that reads the
agreement floor (farm.results.evidence), with the reasons a build misses them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from farm.results.evidence import CONFIDENT_MARGIN, Evidence, Judged, Rule, judge


class Judgeable(Protocol):
    """What the constraints read of a build: farm.results.select.Candidate (a Protocol, so this module need not import select)."""

    @property
    def evidence(self) -> Evidence | None: ...

    @property
    def agreement_share(self) -> float | None: ...

    def value(self, metric: str) -> float | None: ...


@dataclass(frozen=True)
class Constraints:
    """What a build must meet to win, like Model Analyzer's constraints (None: not constrained), and the
    rule that reads the agreement floor (farm.results.evidence): from evidence (the default) or as a bare threshold."""

    min_top1_agreement: float | None = 0.99  # detectors: the floor on box recall
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None  # labelled top-1 accuracy below fp32's; a build without labels fails it
    rule: Rule = "evidence"
    confident_margin: float = CONFIDENT_MARGIN  # a flip where fp32's softmax margin is at least this is confident

    @staticmethod
    def of(value: Constraints | float | dict[str, Any]) -> Constraints:
        if isinstance(value, Constraints):
            return value
        if isinstance(value, dict):
            return Constraints(**{"min_top1_agreement": None} | value)
        return Constraints(min_top1_agreement=value)

    def judge(self, c: Judgeable) -> Judged:
        """Eligibility with its reasons: the agreement rule first (NaN, a degenerate reference), then the other floors."""
        found = judge(c.evidence, self.min_top1_agreement, self.rule, self.confident_margin, fallback_share=c.agreement_share,
                      nonfinite=int(c.value("nonfinite") or 0))
        if found.speed_only or not found.eligible and c.value("nonfinite"):
            return found  # nothing else means anything against such a reference, or with such outputs
        missed = list(found.missed)
        cosine = c.value("cosine")
        if self.min_cosine is not None and not (cosine is not None and cosine >= self.min_cosine):
            missed.append(f"cosine {'-' if cosine is None else f'{cosine:.5f}'} < {self.min_cosine}")
        if self.max_accuracy_drop is not None:
            accuracy, reference = c.value("accuracy"), c.value("reference_accuracy")
            if accuracy is None or reference is None or reference - accuracy > self.max_accuracy_drop:
                missed.append(f"accuracy drop {None if accuracy is None or reference is None else round(reference - accuracy, 4)} > {self.max_accuracy_drop}")
        return Judged(missed)

    def failures(self, c: Judgeable) -> list[str]:
        """What `c` misses, one phrase each (empty: eligible)."""
        return self.judge(c).missed

    @property
    def metric(self) -> str:
        """The fidelity metric the constraints are about (a chart's axis): the first one set."""
        return "cosine" if self.min_cosine is not None and self.min_top1_agreement is None else (
            "accuracy" if self.max_accuracy_drop is not None and self.min_top1_agreement is None else "top1_agreement")

    def describe(self) -> str:
        parts = [f"top-1 agreement >= {self.min_top1_agreement}" + (" (evidence)" if self.rule == "evidence" else "")
                 if self.min_top1_agreement is not None else "",
                 f"cosine >= {self.min_cosine}" if self.min_cosine is not None else "",
                 f"accuracy drop <= {self.max_accuracy_drop}" if self.max_accuracy_drop is not None else ""]
        return " and ".join(p for p in parts if p) or "no constraint"

    def rule_text(self) -> str:
        """The selection rule in words: stored with every answer (docs/verdicts.md section 5)."""
        floor = self.min_top1_agreement
        others = " and ".join(p for p in (f"mean cosine >= {self.min_cosine}" if self.min_cosine is not None else "",
                                          f"labelled accuracy drop <= {self.max_accuracy_drop}" if self.max_accuracy_drop is not None else "") if p)
        if floor is None:
            agreement = "no floor on agreement"
        elif self.rule == "threshold":
            agreement = f"top-1 agreement (detectors: box recall) >= {floor} (bare threshold)"
        else:
            agreement = (f"no confident flip (an image where fp32's softmax margin p1-p2 >= {self.confident_margin} changes class, "
                         f"unless fp32 itself changes it under a 2-pixel shift) and the 95% Wilson upper bound of top-1 agreement "
                         f"(detectors: box recall) >= {floor}, or no more disagreement than fp32 under that shift")
        return (f"eligible when {agreement}" + (f", and {others}" if others else "")
                + "; NaN or inf outputs are never eligible; a degenerate fp32 reference judges nothing (a speed result "
                  "over the builds with finite outputs)")

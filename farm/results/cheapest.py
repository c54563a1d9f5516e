"""The cheapest place to serve a model: across every target of the fleet, the build and batch size
with the lowest cost per million inferences whose p99 latency stays under a bound, and which meets
the fidelity constraints. A query over priced candidates (farm.results.select.candidates)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from farm.results.constraints import Constraints
from farm.results.select import Candidate


@dataclass(frozen=True)
class TargetOffer:
    """One target's cheapest build under the bound, or why it has none."""

    target: str
    candidate: Candidate | None
    why: str = ""  # where candidate is None

    @property
    def cost(self) -> float | None:
        return self.candidate.value("cost") if self.candidate is not None else None


@dataclass(frozen=True)
class Cheapest:
    """A model's targets, cheapest first (those with no offer last), under one p99 bound."""

    model: str
    max_p99_ms: float
    offers: tuple[TargetOffer, ...]

    @property
    def answer(self) -> TargetOffer | None:
        return self.offers[0] if self.offers and self.offers[0].candidate is not None else None


def cheapest(found: Iterable[Candidate], max_p99_ms: float, constraints: Constraints | float = 0.99,
             batch_size: int | None = None) -> list[Cheapest]:
    """Per model, each target's cheapest eligible build (any batch size, or `batch_size`) whose p99 <= max_p99_ms."""
    rule = Constraints.of(constraints)
    by_model: dict[str, dict[str, list[Candidate]]] = {}
    for c in found:
        if batch_size is None or c.batch_size == batch_size:
            by_model.setdefault(c.model, {}).setdefault(c.target, []).append(c)
    answers = []
    for model, targets in sorted(by_model.items()):
        offers = [_offer(target, builds, max_p99_ms, rule) for target, builds in sorted(targets.items())]
        offers.sort(key=lambda o: (o.cost is None, o.cost or 0.0, o.target))
        answers.append(Cheapest(model, max_p99_ms, tuple(offers)))
    return answers


def _offer(target: str, builds: list[Candidate], max_p99_ms: float, rule: Constraints) -> TargetOffer:
    eligible = [c for c in builds if c.eligible(rule)]
    if not eligible:
        return TargetOffer(target, None, f"no build meets {rule.describe()}")
    fast = [c for c in eligible if c.value("p99") is not None and c.p99 <= max_p99_ms]
    if not fast:
        best = min(eligible, key=lambda c: c.p99)
        return TargetOffer(target, None, f"p99 above {max_p99_ms:g} ms: the lowest is {best.p99:.2f} ms (batch {best.batch_size})")
    priced = [c for c in fast if c.value("cost") is not None]
    if not priced:
        return TargetOffer(target, None, "no price for this target: add it under prices: (docs/cost.md)")
    return TargetOffer(target, min(priced, key=lambda c: (c.value("cost"), c.p99)))

"""Winners you can trust: a verdict from real interleaved timings, a tie where engines are alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from farm.results import verdict
from workers import stage_work
from workers.device import describe
from workers.models import Exported, export
from workers.structs import BuildRequest, Engine, ModelRef

RESNET = ModelRef("resnet18", "torchvision:resnet18", None, (3, 224, 224))


@dataclass
class Entry:
    """A build as the verdict sees it: its key, precision and options, and what its benchmark found."""

    build_key: str
    precision: str = "fp32"
    options: dict[str, object] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)


@pytest.fixture(scope="module")
def resnet() -> Exported:
    return export(RESNET)


def ort_engine(resnet: Exported, level: str) -> Engine:
    target = describe().targets()[0]
    options = {"intra_op_threads": 1, "graph_optimization_level": level}
    return stage_work.build_engine(BuildRequest(RESNET, "fp32", "onnxruntime", options, target, (1,)), resnet.onnx_bytes, None)


def test_the_same_engine_twice_is_a_tie_not_a_winner() -> None:
    # Two labels, one engine: rounds that share the machine's drift and differ only by noise (synthetic:
    # live timings of one engine may lead either way on a loaded machine, and their speed is benchmarks/' business).
    drift = 1.0 + np.random.default_rng(5).normal(0, 0.05, 8)
    noise = np.random.default_rng(6).normal(0, 0.01, (2, 8))
    rounds = {label: {"median": list(drift * (1 + n))} for label, n in zip(("a", "b"), noise, strict=True)}
    a, b = Entry("a", options={"intra_op_threads": 1}), Entry("b", options={"intra_op_threads": 1, "label": "again"})
    decided = verdict.from_retime([a, b], rounds, "p50")
    assert decided.outcome == "tie", decided.note
    assert set(decided.tied) == {"a", "b"} and decided.winner == "a"  # the simpler of the two (fewer options) is answered
    # not a winner: either the rounds do not agree, or they agree on a lead too small to count
    assert decided.p_value is not None and (decided.p_value >= 0.05 or (decided.margin or 0.0) < 1 + verdict.MIN_MARGIN)
    assert "tie" in decided.note
    # The same holds with the labels swapped: which one is named first decides nothing.
    swapped = verdict.from_retime([a, b], {"a": rounds["b"], "b": rounds["a"]}, "p50")
    assert swapped.outcome == "tie" and swapped.winner == "a"


def test_a_consistent_lead_too_small_to_matter_is_a_tie() -> None:
    # b is slower in every round (p = 0.008), by 0.5%: real, and meaningless for choosing an engine
    a, b = Entry("a"), Entry("b", options={"label": "again"})
    lead = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02]
    rounds = {"a": {"median": lead}, "b": {"median": [t * 1.005 for t in lead]}}
    decided = verdict.from_retime([a, b], rounds, "p50")
    assert decided.outcome == "tie" and decided.p_value == pytest.approx(2 / 256) and decided.tied == ("a", "b")
    assert "under 1.02x does not count" in decided.note
    # the same consistency at 5% is a winner
    rounds["b"]["median"] = [t * 1.05 for t in lead]
    assert verdict.from_retime([a, b], rounds, "p50").outcome == "winner"


def test_a_clearly_faster_engine_wins_with_a_significant_margin(resnet: Exported) -> None:
    # Real interleaved rounds of two engines give every round for each (their speed is benchmarks/' business:
    # on a loaded 2-core machine fused and plain ORT came out tied, p = 0.09) ...
    fused, plain = ort_engine(resnet, "all"), ort_engine(resnet, "disable")
    live = stage_work.retime_engines([(plain.data, plain.manifest, ()), (fused.data, fused.manifest, ())], 1, 8, 0.05)
    assert [sorted(r) for r in live] == [["mean", "median", "p99"]] * 2
    assert all(len(r["median"]) == 8 and min(r["median"]) > 0 for r in live)
    # ... and synthetic rounds, one engine 20% faster in each under 5% drift, decide as a real lead must.
    drift = 1.0 + np.random.default_rng(3).normal(0, 0.05, 8)
    rounds = {"plain": {"median": list(drift * 1.2)}, "fused": {"median": list(drift * (1 + np.random.default_rng(4).normal(0, 0.01, 8)))}}
    contenders = [Entry("plain"), Entry("fused")]
    decided = verdict.from_retime(contenders, rounds, "p50")
    assert decided.outcome == "winner" and decided.winner == "fused" and decided.runner_up == "plain", decided.note
    assert decided.p_value is not None and decided.p_value < 0.05
    assert decided.margin is not None and decided.interval is not None and 1.0 < decided.interval[0] <= decided.margin <= decided.interval[1]
    assert "interleaved rounds" in decided.note


def test_the_paired_test_is_exact() -> None:
    # every round favours the leader: the only two of 2^8 sign patterns as extreme are all + and all -
    assert verdict.sign_flip_p_value([0.1] * 8) == pytest.approx(2 / 256)
    assert verdict.sign_flip_p_value([0.1, -0.1] * 4) == 1.0
    assert verdict.sign_flip_p_value([0.0] * 8) == 1.0
    # 5 of 8 rounds is not enough, however large the wins
    assert verdict.sign_flip_p_value([1.0] * 5 + [-0.01] * 3) > 0.05


def test_without_a_retiming_the_benchmark_intervals_decide() -> None:
    apart = [Entry("fast", metrics={"p50": 1.0, "p50_low": 0.98, "p50_high": 1.02}),
             Entry("slow", metrics={"p50": 1.5, "p50_low": 1.45, "p50_high": 1.55})]
    won = verdict.from_intervals(apart, "p50")
    assert won.outcome == "winner" and won.winner == "fast" and won.margin == pytest.approx(1.5) and won.method == "intervals"
    overlapping = [Entry("int8", "int8", metrics={"p50": 1.0, "p50_low": 0.9, "p50_high": 1.1}),
                   Entry("fp32", "fp32", metrics={"p50": 1.05, "p50_low": 0.95, "p50_high": 1.15})]
    tie = verdict.from_intervals(overlapping, "p50")
    # a tie, answered by the simpler engine: fp32 before int8
    assert tie.outcome == "tie" and tie.winner == "fp32" and tie.tied == ("fp32", "int8")
    # intervals apart by a hair: still a tie (1% < MIN_MARGIN)
    close = [Entry("a", metrics={"p50": 1.0, "p50_low": 0.999, "p50_high": 1.001}),
             Entry("b", metrics={"p50": 1.01, "p50_low": 1.009, "p50_high": 1.011})]
    assert verdict.from_intervals(close, "p50").tied == ("a", "b")

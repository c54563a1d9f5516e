"""Every measure farm records, defined once: its column, header, unit and which way is better.

Tables (terminal, dashboard), JSON output, winners selection and the recorder read this table;
a new metric is one entry here (and a column in farm.store.schema where it is stored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the dashboard reads this table and must not import workers
    from workers.bench import Timings
    from workers.detection import DetectionFidelity
    from workers.fidelity import Fidelity

Table = Literal["benchmark", "fidelity", "derived"]  # derived: computed when answering (cost), never stored


@dataclass(frozen=True)
class Metric:
    name: str  # what a user types: --objective p50, min_cosine
    table: Table
    column: str  # the stage table's column
    header: str  # a table's column heading
    unit: str  # "ms", "samples/s", "" (a ratio)
    better: Literal["lower", "higher"] | None  # None: descriptive, never ranked on
    fmt: str = "{:.3f}"
    of: Callable[[Any], Any] | None = None  # the value from the worker's result (benchmarks: Timings)

    def format(self, value: float | None) -> str:
        return "-" if value is None else self.fmt.format(value)

    def score(self, value: float) -> float:
        """Lower is better, whichever way the metric points."""
        return -value if self.better == "higher" else value


def _latency(stat: str) -> Callable[[Timings], float]:
    return lambda t: float(getattr(t.latency, stat))


def _gpu(stat: str) -> Callable[[Timings], float | None]:
    return lambda t: float(getattr(t.gpu_compute, stat)) if t.gpu_compute is not None else None


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("p50", "benchmark", "latency_p50", "p50 ms", "ms", "lower", "{:.2f}", _latency("median")),
        Metric("p50_low", "benchmark", "latency_p50_low", "p50 low ms", "ms", None, "{:.2f}",
               lambda t: t.p50_interval[0] if t.p50_interval else None),
        Metric("p50_high", "benchmark", "latency_p50_high", "p50 high ms", "ms", None, "{:.2f}",
               lambda t: t.p50_interval[1] if t.p50_interval else None),
        Metric("p90", "benchmark", "latency_p90", "p90 ms", "ms", "lower", "{:.2f}", _latency("p90")),
        Metric("p95", "benchmark", "latency_p95", "p95 ms", "ms", "lower", "{:.2f}", _latency("p95")),
        Metric("p99", "benchmark", "latency_p99", "p99 ms", "ms", "lower", "{:.2f}", _latency("p99")),
        Metric("mean", "benchmark", "latency_mean", "mean ms", "ms", "lower", "{:.2f}", _latency("mean")),
        Metric("min", "benchmark", "latency_min", "min ms", "ms", None, "{:.2f}", _latency("min")),
        Metric("max", "benchmark", "latency_max", "max ms", "ms", None, "{:.2f}", _latency("max")),
        Metric("cv", "benchmark", "latency_cv", "cv", "", None, "{:.1%}", _latency("cv")),
        Metric("throughput", "benchmark", "throughput", "samples/s", "samples/s", "higher", "{:.1f}", lambda t: t.throughput),
        Metric("gpu_p50", "benchmark", "gpu_compute_p50", "GPU p50 ms", "ms", "lower", "{:.3f}", _gpu("median")),
        Metric("gpu_mean", "benchmark", "gpu_compute_mean", "GPU mean ms", "ms", None, "{:.3f}", _gpu("mean")),
        Metric("gpu_cv", "benchmark", "gpu_compute_cv", "GPU cv", "", None, "{:.1%}", _gpu("cv")),
        Metric("iterations", "benchmark", "iterations", "iterations", "", None, "{:d}", lambda t: t.iterations),
        Metric("wall_s", "benchmark", "wall_s", "timed s", "s", None, "{:.2f}", lambda t: t.wall_s),
        Metric("converged", "benchmark", "converged", "converged", "", None, "{}", lambda t: t.converged),
        Metric("top1_agreement", "fidelity", "top1_agreement", "top-1 agr.", "", "higher"),
        Metric("top5_agreement", "fidelity", "top5_agreement", "top-5 agr.", "", "higher"),
        Metric("cosine", "fidelity", "cosine_mean", "cosine", "", "higher", "{:.4f}"),
        Metric("cosine_min", "fidelity", "cosine_min", "min cosine", "", "higher", "{:.4f}"),
        Metric("max_abs_error", "fidelity", "max_abs_error", "max |err|", "", "lower", "{:.3g}"),
        Metric("accuracy", "fidelity", "accuracy", "accuracy", "", "higher"),
        Metric("reference_accuracy", "fidelity", "reference_accuracy", "fp32 accuracy", "", None),
        Metric("box_recall", "fidelity", "box_recall", "box recall", "", "higher"),
        Metric("box_precision", "fidelity", "box_precision", "box precision", "", "higher"),
        Metric("kl", "fidelity", "kl_mean", "KL", "", "lower", "{:.3g}"),
        Metric("agreement_low", "fidelity", "agreement_low", "agr. low", "", None),
        Metric("agreement_high", "fidelity", "agreement_high", "agr. high", "", None),
        Metric("nonfinite", "fidelity", "nonfinite", "non-finite", "", None, "{:d}"),
        # USD per million inferences at the measured throughput and the target's price (farm.results.prices)
        Metric("cost", "derived", "", "USD/M", "USD", "lower", "{:.4f}"),
        Metric("cost_low", "derived", "", "USD/M low", "USD", None, "{:.4f}"),  # the cost of the p50 interval's ends
        Metric("cost_high", "derived", "", "USD/M high", "USD", None, "{:.4f}"),
    )
}
Objective = Literal["p50", "p99", "throughput", "cost"]
OBJECTIVES: tuple[Objective, ...] = ("p50", "p99", "throughput", "cost")  # what winners are chosen by (--objective, a spec's selection)
# What a sweep's re-timing ranks by (its spec's selection.objective); cost is priced when answering, not measured.
TIMED_OBJECTIVES: tuple[Objective, ...] = ("p50", "p99", "throughput")
LATENCY_OBJECTIVES: tuple[Objective, ...] = tuple(m for m in OBJECTIVES if METRICS[m].unit == "ms")  # marked on latency histograms

# The subsets every table shows, in column order: a table names one of these, never its own list.
TIMING_METRICS = ("p50", "p99", "throughput", "cv")  # two builds' timings side by side (the dashboard's Compare)
WINNER_METRICS = (*TIMING_METRICS, "cost", "top1_agreement")  # the terminal's winners table
RESULT_METRICS = (*TIMING_METRICS, "top1_agreement", "cosine")  # a results row (farm.results.queries.results, the dashboard's Results)
REPORT_METRICS = ("p50", "p99", "throughput", "cost", "cv", "converged", "top1_agreement", "cosine")  # a winner in the mailable report
BENCHMARK_METRICS = ("p50", "p90", "p99", "mean", "min", "max", "cv", "throughput", "iterations", "gpu_p50")  # an engine's benchmarks
FIDELITY_METRICS = ("top1_agreement", "agreement_low", "agreement_high", "top5_agreement", "cosine", "cosine_min", "kl",
                    "max_abs_error", "accuracy", "reference_accuracy", "box_recall", "box_precision", "nonfinite")  # an engine's fidelity
SUMMARY_FIDELITY = ("top1_agreement", "cosine")  # a build's fidelity in one line (the dashboard's Compare summary)
CONSTRAINED_METRICS = ("top1_agreement", "cosine", "accuracy")  # the fidelity metrics a winners constraint is on
# The agreement a fidelity floor (min_top1_agreement) reads: a classifier's top-1 agreement, a detector's box recall.
AGREEMENT_METRICS = ("top1_agreement", "box_recall")
BUILD_METRICS = (*TIMING_METRICS, *AGREEMENT_METRICS, "cosine")  # every build of a sweep in the mailable report
SUBSETS = {"OBJECTIVES": OBJECTIVES, "TIMING_METRICS": TIMING_METRICS, "WINNER_METRICS": WINNER_METRICS,
           "RESULT_METRICS": RESULT_METRICS, "REPORT_METRICS": REPORT_METRICS, "BENCHMARK_METRICS": BENCHMARK_METRICS,
           "FIDELITY_METRICS": FIDELITY_METRICS, "SUMMARY_FIDELITY": SUMMARY_FIDELITY,
           "CONSTRAINED_METRICS": CONSTRAINED_METRICS, "AGREEMENT_METRICS": AGREEMENT_METRICS,
           "BUILD_METRICS": BUILD_METRICS}


def of_table(table: Table) -> list[Metric]:
    return [m for m in METRICS.values() if m.table == table]


def benchmark_columns(timings: Timings) -> dict[str, Any]:
    """A benchmark row's measured columns: every benchmark metric, the noise flag and the raw times."""
    found = {m.column: m.of(timings) for m in of_table("benchmark") if m.of is not None}
    return found | {"noisy": timings.noisy, "raw_ms": timings.raw_ms, "raw_gpu_ms": timings.raw_gpu_ms,
                    "converged": timings.converged, "window_medians": timings.window_medians,
                    "data_transfers": timings.data_transfers, "clocks": timings.clocks or None,
                    "peak_host_memory_bytes": timings.peak_host_memory_bytes, "peak_device_memory_bytes": timings.peak_device_memory_bytes}


def fidelity_columns(result: Fidelity | DetectionFidelity) -> dict[str, Any]:
    """A fidelity row's measured columns: a classifier's agreement, or a detector's box agreement."""
    from workers.stats import wilson
    from workers.detection import DetectionFidelity

    if isinstance(result, DetectionFidelity):
        low, high = wilson(result.matched, result.reference_boxes)
        return {"samples": result.images, "reference_boxes": result.reference_boxes, "candidate_boxes": result.candidate_boxes,
                "box_recall": result.recall, "box_precision": result.precision, "score_diff_mean": result.score_diff_mean,
                "score_diff_max": result.score_diff_max, "iou_mean": result.iou_mean, "agreed": result.matched,
                "agreement_low": low, "agreement_high": high, "evidence": {"per_image": [list(p) for p in result.per_image]}}
    found = asdict(result)
    evidence = {"flipped": list(found.pop("flipped")), "margins": list(found.pop("reference_margins"))}
    low, high = wilson(result.agreed, result.samples)
    return found | {"evidence": evidence, "agreement_low": low, "agreement_high": high}


def values(row: Any, table: Table) -> dict[str, float | None]:
    """Every metric of `table` read off a stored row (None for a missing row)."""
    return {m.name: (getattr(row, m.column) if row is not None else None) for m in of_table(table)}

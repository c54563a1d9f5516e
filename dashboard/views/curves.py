"""Curves: for one model, latency (p50 and p99) and throughput against batch size, one line per engine, one pair of
charts per target: where a build stops scaling, and where the winner at batch 1 stops being the winner."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from farm.results.labels import EngineLabels
from farm.results.metrics import LATENCY_OBJECTIVES, METRICS
from farm.results.select import Candidate

DASHES = ("solid", "dot")  # the latency objectives of one engine (p50, p99) share its colour
MOST_SHOWN = 12

st.title("Curves")
at = data.where()
data.require(at, "benchmarks")

sweeps = data.sweeps(at)
sweep_names = {None: "all sweeps"} | {int(r.id): f"#{r.id} {r.name}" for r in sweeps.itertuples()}
controls = st.columns(3)
sweep_id = controls[1].selectbox("Sweep", list(sweep_names), format_func=sweep_names.__getitem__, key="curves_sweep")
found = data.found_candidates(at, sweep_id)
if not found:
    st.info("No benchmark in this sweep.")
    st.stop()
model = controls[0].selectbox("Model", sorted({c.model for c in found}), key="curves_model")
mine = [c for c in found if c.model == model]
# A chart of thousands of lines says nothing, and drawing it took seconds (benchmarks/dashboard_render.py).
shown = int(controls[2].number_input("Engines per target", min_value=1, max_value=200, value=MOST_SHOWN, key="curves_shown",
                                     help="the fastest engines by their best throughput at any batch size"))
st.caption("One line per engine (its short key, then the options that tell this model's engines apart); latency solid for "
           "p50, dotted for p99. An engine timed at one batch size is a point.")


def fastest(group: list[Candidate], most: int) -> list[Candidate]:
    """The benchmarks of the `most` engines with the highest throughput at any batch size."""
    best: dict[str, float] = {}
    for c in group:
        best[c.build_key] = max(best.get(c.build_key, 0.0), c.value("throughput") or 0.0)
    kept = set(sorted(best, key=lambda key: (-best[key], key))[:most])
    return [c for c in group if c.build_key in kept]


def by_engine(group: list[Candidate]) -> dict[str, list[Candidate]]:
    """Each engine's benchmarks, by batch size, under its name in this chart."""
    labels = EngineLabels.among(group)
    lines: dict[str, list[Candidate]] = {}
    for c in sorted(group, key=lambda c: (c.build_key, c.batch_size)):
        lines.setdefault(labels.named(c, c.build_key), []).append(c)
    return lines


def curves(lines: dict[str, list[Candidate]], metrics: tuple[str, ...], axis: str) -> go.Figure:
    figure = go.Figure()
    for i, (name, points) in enumerate(lines.items()):
        colour = f"hsl({(i * 137) % 360}, 65%, 45%)"  # the golden angle: neighbouring engines far apart in hue
        for metric in metrics:
            figure.add_trace(go.Scatter(
                x=[c.batch_size for c in points], y=[c.value(metric) for c in points], mode="lines+markers",
                name=f"{name} {metric}" if len(metrics) > 1 else name, legendgroup=name,
                line={"color": colour, "dash": DASHES[metrics.index(metric) % len(DASHES)]},
                hovertemplate=f"batch %{{x}}<br>{METRICS[metric].header} %{{y:.3f}}<extra>{name}</extra>",
            ))
    figure.update_layout(xaxis_title="batch size", yaxis_title=axis, height=380, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         legend={"orientation": "h", "y": -0.35})
    figure.update_xaxes(type="log", dtick=0.30103)  # batch sizes are powers of two: one tick per doubling
    return figure


for target in sorted({c.target for c in mine}):
    group = [c for c in mine if c.target == target]
    engines = len({c.build_key for c in group})
    lines = by_engine(fastest(group, shown))
    st.subheader(target)
    if engines > shown:
        st.caption(f"The {shown} fastest of {engines} engines by their best throughput; `farm best` and the Results page have them all.")
    left, right = st.columns(2)
    left.plotly_chart(curves(lines, LATENCY_OBJECTIVES, f"latency ({METRICS[LATENCY_OBJECTIVES[0]].unit})"), key=f"latency-{target}")
    right.plotly_chart(curves(lines, ("throughput",), f"throughput ({METRICS['throughput'].unit})"), key=f"throughput-{target}")

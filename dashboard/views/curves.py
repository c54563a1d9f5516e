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

st.title("Curves")
at = data.where()
data.require(at, "benchmarks")

sweeps = data.sweeps(at)
sweep_names = {None: "all sweeps"} | {int(r.id): f"#{r.id} {r.name}" for r in sweeps.itertuples()}
controls = st.columns(2)
sweep_id = controls[1].selectbox("Sweep", list(sweep_names), format_func=sweep_names.__getitem__, key="curves_sweep")
found = data.found_candidates(at, sweep_id)
if not found:
    st.info("No benchmark in this sweep.")
    st.stop()
model = controls[0].selectbox("Model", sorted({c.model for c in found}), key="curves_model")
mine = [c for c in found if c.model == model]
st.caption("One line per engine (its short key, then the options that tell this model's engines apart); latency solid for "
           "p50, dotted for p99. An engine timed at one batch size is a point.")


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
    lines = by_engine([c for c in mine if c.target == target])
    st.subheader(target)
    left, right = st.columns(2)
    left.plotly_chart(curves(lines, LATENCY_OBJECTIVES, f"latency ({METRICS[LATENCY_OBJECTIVES[0]].unit})"), key=f"latency-{target}")
    right.plotly_chart(curves(lines, ("throughput",), f"throughput ({METRICS['throughput'].unit})"), key=f"throughput-{target}")

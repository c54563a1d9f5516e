"""Winners: the best build per model x target x batch size for an objective and a fidelity floor, with Pareto charts."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from farm.select import OBJECTIVES, Candidate, Objective, pareto_front, winners

AXIS = {"p50": ("p50_ms", "p50 latency (ms)"), "p99": ("p99_ms", "p99 latency (ms)"), "throughput": ("throughput", "throughput (samples/s)")}
OBJECTIVE_NAMES = {"p50": "p50 latency", "p99": "p99 latency", "throughput": "throughput"}
COLOURS = {"tensorrt": "#76b900", "onnxruntime": "#1f77b4", "torch": "#ee4c2c"}
SYMBOLS = {"fp32": "circle", "fp16": "diamond", "int8": "square", "fp8": "triangle-up"}

st.title("Winners")
at = data.where()
data.require(at, "benchmarks")

sweeps = data.sweeps(at)
sweep_names = {None: "all sweeps"} | {int(r.id): f"#{r.id} {r.name}" for r in sweeps.itertuples()}
controls = st.columns([2, 3, 2])
objective: Objective = controls[0].radio("Objective", OBJECTIVES, format_func=OBJECTIVE_NAMES.__getitem__, key="objective", horizontal=True)
floor = controls[1].slider("Minimum top-1 agreement with fp32", min_value=0.5, max_value=1.0, value=0.99, step=0.001,
                           format="%.3f", key="floor")
sweep_id = controls[2].selectbox("Sweep", list(sweep_names), format_func=sweep_names.__getitem__, key="winners_sweep")

found = data.found_candidates(at, sweep_id)
best = winners(found, objective, floor)
if not best:
    st.warning(f"No benchmarked build reaches top-1 agreement {floor:.3f}: lower the floor, or run a sweep with fidelity enabled.")
    st.stop()


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


table = pd.DataFrame(
    [
        {"model": c.model, "target": c.target, "batch": c.batch_size, "winner": c.engine,
         "p50 ms": c.p50_ms, "p99 ms": c.p99_ms, "samples/s": c.throughput, "top-1 agr.": c.top1_agreement,
         "vs torch": _times(c.speedup_vs_torch), "vs fp32": _times(c.speedup_vs_fp32),
         "quantized": "-" if c.quantized_fraction is None else f"{c.quantized_fraction:.0%}", "build": c.label}
        for c in best
    ]
)
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "p50 ms": st.column_config.NumberColumn(format="%.3f"),
        "p99 ms": st.column_config.NumberColumn(format="%.3f"),
        "samples/s": st.column_config.NumberColumn(format="%.1f"),
        "top-1 agr.": st.column_config.NumberColumn(format="%.4f"),
    },
    key="winners_table",
)

st.subheader("Download")
st.caption("Each bundle is a ZIP of the engine file and its manifest.json (with the engine's sha256), made when you click.")
seen: set[str] = set()
for c in best:
    if c.build_key in seen:
        continue
    seen.add(c.build_key)
    batches = ", ".join(str(w.batch_size) for w in best if w.build_key == c.build_key)
    text, button = st.columns([4, 1], vertical_alignment="center")
    text.markdown(f"**{c.model}** on `{c.target}` (batch {batches}): `{c.label}`")
    button.download_button(
        "Engine bundle",
        data=data.bundle(at, c.build_key),
        file_name=f"{c.model}-{c.build_key[:8]}.zip",
        mime="application/zip",
        on_click="ignore",
        key=f"download-{c.build_key}",
        icon=":material/download:",
        width="stretch",
    )


def pareto_chart(group: list[Candidate], objective: Objective, floor: float, winner: Candidate | None) -> go.Figure:
    column, title = AXIS[objective]
    measured = [c for c in group if c.top1_agreement is not None]
    front = pareto_front(measured, objective)

    def x(c: Candidate) -> float:
        return float(getattr(c, column))

    figure = go.Figure()
    for backend in sorted({c.backend for c in measured}):
        mine = [c for c in measured if c.backend == backend]
        figure.add_trace(go.Scatter(
            x=[x(c) for c in mine], y=[c.top1_agreement for c in mine], mode="markers", name=backend,
            marker={"size": 11, "color": COLOURS.get(backend, "gray"), "symbol": [SYMBOLS.get(c.precision, "x") for c in mine]},
            text=[f"{c.precision} {' '.join(f'{k}={v}' for k, v in c.options.items())}" for c in mine],
            hovertemplate="%{text}<br>%{x:.3f}<br>top-1 %{y:.4f}<extra>" + backend + "</extra>",
        ))
    figure.add_trace(go.Scatter(x=[x(c) for c in front], y=[c.top1_agreement for c in front], mode="lines",
                                name="Pareto front", line={"dash": "dot", "color": "gray"}))
    if winner is not None:
        figure.add_trace(go.Scatter(x=[x(winner)], y=[winner.top1_agreement], mode="markers", name="winner",
                                    marker={"symbol": "star", "size": 18, "color": "gold", "line": {"width": 1, "color": "black"}}))
    figure.add_hline(y=floor, line_dash="dash", line_color="red", annotation_text=f"floor {floor:.3f}")
    figure.update_layout(xaxis_title=title, yaxis_title="top-1 agreement", height=360, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         legend={"orientation": "h", "y": -0.25})
    return figure


st.subheader("Latency vs fidelity")
st.caption("One point per build (colour: backend; circle fp32, diamond fp16, square int8), the Pareto front dotted, the winner a star.")
models = sorted({c.model for c in found})
batch_sizes = sorted({c.batch_size for c in found})
pick = st.columns(2)
model = pick[0].selectbox("Model", models, key="pareto_model")
batch = pick[1].selectbox("Batch size", batch_sizes, key="pareto_batch")
targets = sorted({c.target for c in found if c.model == model and c.batch_size == batch})
chart_columns = st.columns(2)
for i, target in enumerate(targets):
    group = [c for c in found if c.model == model and c.target == target and c.batch_size == batch]
    winner = next((w for w in best if w.model == model and w.target == target and w.batch_size == batch), None)
    with chart_columns[i % 2]:
        st.markdown(f"**{target}**")
        st.plotly_chart(pareto_chart(group, objective, floor, winner), key=f"pareto-{target}")

"""History: one engine across every sweep that timed it, its p50 and its agreement with fp32 sweep after
sweep, with library version changes marked and significant regressions flagged (each point against the one
before, as `farm diff` judges two sweeps: docs/verdicts.md); and every engine whose newest sweep regressed."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from farm.results.timeline import Point

st.title("History")
at = data.where()
data.require(at, "benchmarks")

engines = data.history_engines(at)
if not engines:
    st.info("No engine has been timed yet.")
    st.stop()

changes = data.history_changes(at)
regressed = [p for p in changes if p.regressed]
st.caption(f"{len(engines)} engines; {len(changes)} timed by two sweeps or more, "
           f"{len(regressed)} of them significantly slower or less faithful in their newest sweep than the sweep before.")
if regressed:
    st.subheader("Regressions in the newest sweeps")
    st.dataframe(pd.DataFrame([{"engine": p.run.engine, "target": p.run.target, "batch": p.run.batch_size, "sweep": p.sweep.title,
                                "was": p.since.a.p50 if p.since else None, "now": p.run.p50,
                                "change": data.speed_text(p), "fidelity": p.since.fidelity.describe() if p.since else "",
                                "versions": p.versions_changed} for p in regressed]),
                 hide_index=True, key="history_regressions",
                 column_config={"engine": st.column_config.TextColumn(width=230), "target": st.column_config.TextColumn(width=110),
                                "batch": st.column_config.NumberColumn(width=45), "sweep": st.column_config.TextColumn(width=110),
                                "was": st.column_config.NumberColumn("was p50 ms", format="%.3f", width=70),
                                "now": st.column_config.NumberColumn("now p50 ms", format="%.3f", width=70),
                                "change": st.column_config.TextColumn(width=200)})

# the page opens on the engine with the longest history: a flagged one first
flagged = {p.run.match_key for p in regressed}
longest = sorted(engines, key=lambda k: (k not in flagged, -data.history_count(at, k), engines[k].engine))
models = list(dict.fromkeys(engines[k].model for k in longest))
controls = st.columns([1, 3])
model = controls[0].selectbox("Model", models, key="history_model")
mine = [k for k in longest if engines[k].model == model]
key = controls[1].selectbox("Engine", mine, key="history_engine",
                            format_func=lambda k: f"{engines[k].engine} on {engines[k].target}, batch {engines[k].batch_size} "
                                                  f"({data.history_count(at, k)} sweeps)")
points: list[Point] = data.history_points(at, key)


def p50_chart(points: list[Point]) -> go.Figure:
    """p50 per sweep, with the raw timings' spread (p5-p95), significant slowdowns in red and version changes marked."""
    x = [p.sweep.title for p in points]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=x, y=[p.run.p50 for p in points], mode="lines+markers", name="p50",
                                error_y={"type": "data", "symmetric": False,
                                         "array": [data.spread(p)[1] for p in points], "arrayminus": [data.spread(p)[0] for p in points]},
                                marker={"color": ["#d62728" if p.slower else "#1f77b4" for p in points], "size": 9},
                                customdata=[data.speed_text(p) for p in points],
                                hovertemplate="%{x}: %{y:.3f} ms<br>%{customdata}<extra></extra>"))
    for p in points:
        if p.versions_changed:
            figure.add_vline(x=p.sweep.title, line_dash="dash", line_color="#7f7f7f")
            figure.add_annotation(x=p.sweep.title, y=1, yref="paper", text=p.versions_changed, showarrow=False, textangle=-90,
                                  xanchor="right", yanchor="top", font={"size": 10})
    figure.update_layout(yaxis_title="p50 ms (bars: p5-p95 of the raw timings)", xaxis_title="sweep", height=340,
                         margin={"l": 10, "r": 10, "t": 30, "b": 10}, showlegend=False)
    return figure


def fidelity_chart(points: list[Point]) -> go.Figure:
    judged = [p for p in points if p.run.share is not None]
    figure = go.Figure(go.Scatter(x=[p.sweep.title for p in judged], y=[p.run.share for p in judged], mode="lines+markers",
                                  marker={"color": ["#d62728" if p.since is not None and p.since.fidelity.dropped else "#2ca02c" for p in judged]}))
    lowest = min(p.run.share or 0.0 for p in judged)
    figure.update_layout(yaxis_title="top-1 agreement with fp32", xaxis_title="sweep", height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         yaxis_range=[min(0.9, lowest - 0.02), 1.01])
    return figure


st.plotly_chart(p50_chart(points), key="history_p50")
if any(p.run.share is not None for p in points):
    st.plotly_chart(fidelity_chart(points), key="history_fidelity")
st.dataframe(pd.DataFrame([{"sweep": p.sweep.title, "started": p.sweep.started_at, "p50 ms": p.run.p50, "vs sweep before": data.speed_text(p),
                            "fidelity": p.since.fidelity.describe() if p.since else ("-" if p.run.share is None else f"{p.run.share:.3f}"),
                            "versions changed": p.versions_changed, "also changed": ", ".join(p.since.changes) if p.since else "",
                            "build": p.run.build_key[:8]} for p in points]),
             hide_index=True, key="history_table", column_config={"p50 ms": st.column_config.NumberColumn(format="%.3f")})
st.caption("Each point against the sweep before it: a bootstrap on the medians of the two sweeps' raw timings; slower or faster only "
           "where p < 0.05 and by 2% or more (red: significantly slower). `farm diff A B` gives the same verdicts for whole sweeps.")

"""Compare: two builds side by side: timings per batch size with their latency histograms overlaid,
fidelity, options and manifests, with what differs. Opens on two builds that were timed."""

from __future__ import annotations

import difflib
import json
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from farm.results.metrics import METRICS, SUMMARY_FIDELITY, TIMING_METRICS
from farm.results.queries import BuildDetail

st.title("Compare")
at = data.where()
data.require(at)

choices = data.build_choices(at)
keys = list(choices)
if len(keys) < 2:
    st.info("Comparing needs two builds; run a sweep with more than one backend, precision or option.")
    st.stop()
# Open on two builds with timings (the newest and the fastest of its peers), not on two that were never timed.
pair = data.timed_pair(at) or (keys[0], keys[1])
preset_a = st.session_state.get("compare_a")
preset_b = st.session_state.get("compare_b")
key_a0 = preset_a if preset_a in choices else pair[0] if pair[0] in choices else keys[0]
key_b0 = preset_b if preset_b in choices else next(k for k in (pair[1], pair[0], *keys) if k in choices and k != key_a0)
left, right = st.columns(2)
key_a = left.selectbox("Build A", keys, index=keys.index(key_a0), format_func=choices.__getitem__, key="compare_pick_a")
key_b = right.selectbox("Build B", keys, index=keys.index(key_b0), format_func=choices.__getitem__, key="compare_pick_b")
st.session_state["compare_a"], st.session_state["compare_b"] = key_a, key_b
a, b = data.build_detail(at, key_a), data.build_detail(at, key_b)
if a is None or b is None:
    st.error("One of the builds disappeared from the store.")
    st.stop()


def label(field: str) -> str:
    """`extra.graph_optimization_level_used` -> `extra › graph optimization level used`: what a person reads."""
    return " › ".join(part.replace("_", " ") for part in field.split("."))


def shown(value: Any) -> str:
    """Numbers to four significant digits, lists as JSON, nothing as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"extra": {"layers": [...]}} -> {"extra.layers": [...]}: one comparable row per leaf."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: value}


def side_by_side(left_values: dict[str, Any], right_values: dict[str, Any]) -> pd.DataFrame:
    names = list(dict.fromkeys([*left_values, *right_values]))
    rows = [{"field": label(n), "A": shown(left_values.get(n)), "B": shown(right_values.get(n)),
             "differs": left_values.get(n) != right_values.get(n)} for n in names]
    return pd.DataFrame(rows, columns=["field", "A", "B", "differs"])


def summary(build: BuildDetail) -> dict[str, Any]:
    fields: dict[str, Any] = {"model": build.model, "target": build.target, "backend": build.backend,
                              "backend version": build.backend_version, "precision": build.precision, "status": build.status,
                              "engine MB": None if build.engine_bytes is None else round(build.engine_bytes / 1e6, 2),
                              "build s": None if build.seconds is None else round(build.seconds, 1)}
    if build.fidelity:
        fields |= {METRICS[m].header: METRICS[m].format(build.fidelity[m]) for m in SUMMARY_FIDELITY}
    return fields


def timings(build: BuildDetail) -> dict[int, dict[str, Any]]:
    return {bench["batch_size"]: bench for bench in build.benchmarks if bench["status"] == "ok"}


st.caption(f"A: {a.label}  \nB: {b.label}")
left, right = st.columns(2)
left.subheader("Summary")
left.dataframe(side_by_side(summary(a), summary(b)), hide_index=True)

right.subheader("Timings")
timed_a, timed_b = timings(a), timings(b)
rows = []
for batch in sorted(set(timed_a) | set(timed_b)):
    for metric in TIMING_METRICS:
        va, vb = timed_a.get(batch, {}).get(metric), timed_b.get(batch, {}).get(metric)
        rows.append({"batch": batch, "metric": METRICS[metric].header, "A": METRICS[metric].format(va), "B": METRICS[metric].format(vb),
                     "B / A": f"{vb / va:.2f}x" if va and vb else "-", "ratio": vb / va if va and vb else None})
if rows:
    right.dataframe(pd.DataFrame(rows), hide_index=True, column_order=["batch", "metric", "A", "B", "B / A"])
else:
    right.info("Neither build has a benchmark.")

# The raw per-iteration latencies of both builds at one batch size both were timed at, overlaid.
common = sorted(batch for batch in set(timed_a) & set(timed_b) if timed_a[batch]["raw_ms"] and timed_b[batch]["raw_ms"])
st.subheader("Latency per iteration")
if common:
    batch = st.radio("Batch size", common, horizontal=True, key="compare_batch")
    figure = go.Figure()
    for name, bench, colour in (("A", timed_a[batch], "#1f77b4"), ("B", timed_b[batch], "#ff7f0e")):
        figure.add_trace(go.Histogram(x=bench["raw_ms"], name=f"{name}: p50 {METRICS['p50'].format(bench['p50'])} ms",
                                      nbinsx=60, opacity=0.6, marker_color=colour))
        figure.add_vline(x=bench["p50"], line_dash="dash", line_color=colour)
    figure.update_layout(barmode="overlay", xaxis_title="latency per iteration (ms)", yaxis_title="iterations", height=360,
                         margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h"})
    st.plotly_chart(figure, key="compare_histogram")
else:
    st.info("The two builds share no batch size with recorded iterations: nothing to overlay.")

st.subheader("Options")
st.dataframe(side_by_side(flatten(a.options), flatten(b.options)), hide_index=True)

st.subheader("Manifests")
manifest_rows = side_by_side(flatten(a.manifest or {}), flatten(b.manifest or {}))
only_diff = st.toggle("Only fields that differ", value=True, key="compare_only_diff")
st.dataframe(manifest_rows[manifest_rows["differs"]] if only_diff else manifest_rows, hide_index=True)
with st.expander("Unified diff of manifest.json"):
    diff = difflib.unified_diff(json.dumps(a.manifest or {}, indent=2).splitlines(), json.dumps(b.manifest or {}, indent=2).splitlines(),
                                fromfile="A/manifest.json", tofile="B/manifest.json", lineterm="")
    st.code("\n".join(diff) or "(identical)", language="diff")

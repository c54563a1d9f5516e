"""Compare: two builds side by side: metrics per batch size, options and manifests, with what differs."""

from __future__ import annotations

import difflib
import json
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data
from farm.metrics import METRICS
from farm.queries import BuildDetail

st.title("Compare")
at = data.where()
data.require(at)

choices = data.build_choices(at)
keys = list(choices)
if len(keys) < 2:
    st.info("Comparing needs two builds; run a sweep with more than one backend, precision or option.")
    st.stop()
preset_a = st.session_state.get("compare_a")
preset_b = st.session_state.get("compare_b")
default_a = keys.index(preset_a) if preset_a in choices else 0
default_b = keys.index(preset_b) if preset_b in choices else (1 if default_a == 0 else 0)
left, right = st.columns(2)
key_a = left.selectbox("Build A", keys, index=default_a, format_func=choices.__getitem__, key="compare_pick_a")
key_b = right.selectbox("Build B", keys, index=default_b, format_func=choices.__getitem__, key="compare_pick_b")
st.session_state["compare_a"], st.session_state["compare_b"] = key_a, key_b
a, b = data.build_detail(at, key_a), data.build_detail(at, key_b)
if a is None or b is None:
    st.error("One of the builds disappeared from the store.")
    st.stop()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"extra": {"layers": [...]}} -> {"extra.layers": "[...]"}: one comparable row per leaf."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def side_by_side(left_values: dict[str, Any], right_values: dict[str, Any]) -> pd.DataFrame:
    names = list(dict.fromkeys([*left_values, *right_values]))
    rows = [{"field": n, "A": _text(left_values.get(n)), "B": _text(right_values.get(n)),
             "differs": left_values.get(n) != right_values.get(n)} for n in names]
    return pd.DataFrame(rows, columns=["field", "A", "B", "differs"])


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def summary(build: BuildDetail) -> dict[str, Any]:
    fields: dict[str, Any] = {"model": build.model, "target": build.target, "backend": build.backend,
                              "backend version": build.backend_version, "precision": build.precision, "status": build.status,
                              "engine MB": None if build.engine_bytes is None else round(build.engine_bytes / 1e6, 3),
                              "build s": None if build.seconds is None else round(build.seconds, 3)}
    if build.fidelity:
        fields |= {METRICS[m].header: build.fidelity[m] for m in ("top1_agreement", "cosine")}
    return fields


def timings(build: BuildDetail) -> dict[int, dict[str, Any]]:
    return {bench["batch_size"]: bench for bench in build.benchmarks if bench["status"] == "ok"}


left, right = st.columns(2)
left.subheader("Summary")
left.dataframe(side_by_side(summary(a), summary(b)), hide_index=True)

right.subheader("Timings")
timed_a, timed_b = timings(a), timings(b)
rows = []
for batch in sorted(set(timed_a) | set(timed_b)):
    for metric in ("p50", "p99", "throughput", "cv"):
        va, vb = timed_a.get(batch, {}).get(metric), timed_b.get(batch, {}).get(metric)
        rows.append({"batch": batch, "metric": METRICS[metric].header, "A": va, "B": vb, "B / A": vb / va if va and vb else None})
if rows:
    right.dataframe(pd.DataFrame(rows), hide_index=True,
                    column_config={"A": st.column_config.NumberColumn(format="%.4f"), "B": st.column_config.NumberColumn(format="%.4f"),
                                   "B / A": st.column_config.NumberColumn(format="%.2fx")})
else:
    right.info("Neither build has a benchmark.")

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

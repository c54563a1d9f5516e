"""Results: every build with its benchmarks and fidelity, filtered and paged in SQL; a selected row opens its Engine page."""

from __future__ import annotations

import math

import streamlit as st

from dashboard import data
from farm.results import queries
from farm.results.metrics import RESULT_METRICS

PAGE_SIZES = (50, 100, 250)

st.title("Results")
at = data.where()
data.require(at)
options = data.filter_options(at)


def _first_page() -> None:
    st.session_state["page"] = 1


cols = [*st.columns(3), *st.columns(3)]
filters = queries.Filters(
    models=tuple(cols[0].multiselect("Model", options.models, key="f_model", on_change=_first_page, placeholder="any")),
    targets=tuple(cols[1].multiselect("Target", options.targets, key="f_target", on_change=_first_page, placeholder="any")),
    backends=tuple(cols[2].multiselect("Backend", options.backends, key="f_backend", on_change=_first_page, placeholder="any")),
    precisions=tuple(cols[3].multiselect("Precision", options.precisions, key="f_precision", on_change=_first_page, placeholder="any")),
    batch_sizes=tuple(cols[4].multiselect("Batch size", options.batch_sizes, key="f_batch", on_change=_first_page, placeholder="any")),
    statuses=tuple(cols[5].multiselect("Status", options.statuses, key="f_status", on_change=_first_page, placeholder="any")),
)

size = int(st.session_state.get("page_size", PAGE_SIZES[0]))
page = int(st.session_state.get("page", 1))
frame, total = data.results(at, filters, size, (page - 1) * size)
pages = max(1, math.ceil(total / size))
if page > pages:
    st.session_state["page"] = page = 1
    frame, total = data.results(at, filters, size, 0)

if frame.empty:
    st.info("No build matches these filters.")
    st.stop()

st.caption(f"{total} rows (a build per batch size; failed builds have no timings). Select a row to open its engine.")
event = st.dataframe(
    frame,
    key="results_table",
    on_select="rerun",
    selection_mode="single-row",
    hide_index=True,
    column_order=["model", "target", "backend", "precision", "batch", "status", *RESULT_METRICS, "engine_MB", "options", "error"],
    column_config={
        **{metric: data.column(metric) for metric in RESULT_METRICS},
        "engine_MB": st.column_config.NumberColumn("engine MB", format="%.2f"),
    },
)

left, right, _ = st.columns([1, 1, 4])
left.selectbox("Rows per page", PAGE_SIZES, key="page_size", on_change=_first_page)
right.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key="page")

rows = event.selection.rows if event is not None else []
if rows:
    chosen = str(frame.iloc[rows[0]]["build_key"])
    st.session_state["engine_build"] = chosen
    st.switch_page("views/engine.py", query_params={"build": chosen})

"""Engine: one build's manifest, options, log, layers, latency histogram, peak memory (host and GPU, of the build and
of each benchmark), its fidelity with the judge images it flipped, and downloads."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from dashboard.downloads import Download, engine_downloads, watch_engines
from farm.results.delivery import ENGINE_SUFFIX
from farm.results.evidence import CONFIDENT_MARGIN
from farm.results.labels import UnknownBuild, one_build, short_key
from farm.results.metrics import LATENCY_OBJECTIVES


def megabytes(count: int | None) -> str:
    return "-" if count is None else f"{count / 1e6:,.0f} MB"


st.title("Engine")
at = data.where()
data.require(at)

choices = data.build_choices(at)
wanted = st.query_params.get("build") or st.session_state.get("engine_build")
if wanted and wanted not in choices:
    try:  # a short key (the first characters, as `farm best` prints them) names its build too
        wanted = one_build(wanted, data.builds_by_prefix(at, wanted))
    except UnknownBuild as exc:
        st.warning(f"{exc}; pick one below.")
    detail = data.build_detail(at, wanted) if wanted not in choices else None
    if detail is not None:
        choices = {wanted: detail.label} | choices
keys = list(choices)
key = st.selectbox("Build", keys, index=keys.index(wanted) if wanted in choices else 0,
                   format_func=lambda k: f"{short_key(k)}  {choices[k]}", key=f"engine_pick-{wanted}")
st.session_state["engine_build"] = key
st.query_params["build"] = key
build = data.build_detail(at, key)
if build is None:
    st.error(f"Build {key} disappeared from the store.")
    st.stop()

metrics = st.container(horizontal=True, gap="large")
metrics.metric("Status", build.status, width="content")
metrics.metric("Backend", build.backend, help=f"version {build.backend_version or 'unknown'}", width="content")
metrics.metric("Precision", build.precision, width="content")
metrics.metric("Engine", "-" if build.engine_bytes is None else f"{build.engine_bytes / 1e6:.2f} MB", width="content")
metrics.metric("Build time", "-" if build.seconds is None else f"{build.seconds:.1f} s", width="content")
metrics.metric("Build memory", megabytes(build.peak_host_memory_bytes), width="content",
               help="peak host memory the build added to its worker (sampled)")
metrics.metric("Build GPU memory", megabytes(build.peak_device_memory_bytes), width="content",
               help="this build's process on its GPU, as the driver counts it; - for a CPU build or one recorded before")
st.caption(f"{build.model} · target `{build.target}` · {build.backend} {build.backend_version or ''} · node {build.node or '-'}"
           f" · built {build.created_at:%Y-%m-%d %H:%M} · key `{build.key}`"
           + (f" · sha256 `{build.engine_sha256}`" if build.engine_sha256 else ""))
if build.error:
    st.error(build.error)

check = data.engine_check(at, build.key)
if check is not None:
    metrics.metric("Artifact", check.state, width="content",
                   help="the engine file as `farm verify` checks it: there (missing), of its size and sha256 (corrupt), or ok")
suffix = ENGINE_SUFFIX.get(build.backend, ".bin")
drawn = engine_downloads(at, build.key, [
    Download("Bundle (.zip)", data.bundle(at, build.key), f"{build.model}-{build.key[:8]}.zip", "application/zip", "engine-bundle",
             ":material/download:"),
    Download("Engine file", data.raw_engine(at, build.key), f"{build.model}-{build.key[:8]}{suffix}", "application/octet-stream",
             "engine-file"),
])
watch_engines(at, {build.key: drawn})
actions = st.container(horizontal=True)
if build.engine_sha256:
    actions.download_button("manifest.json", data=json.dumps(build.manifest or {}, indent=2).encode(), file_name="manifest.json",
                            mime="application/json", on_click="ignore", key="engine-manifest")
if actions.button("Compare with another build", key="to_compare", icon=":material/compare_arrows:"):
    st.session_state["compare_a"] = build.key
    st.switch_page("views/compare.py")

tabs = st.tabs(["Benchmarks", "Fidelity", "Manifest", "Options", "Build log", "Layers"])
with tabs[0]:
    if not build.benchmarks:
        if build.target_kind == "rtx":
            st.info("Built, not timed: this engine was built ahead of time for a TensorRT-RTX GPU this cluster does not "
                    "have, so nothing here can run it. Its size and build time are above; `farm pull --target "
                    f"{build.target}` hands it out.")
        elif build.status != "ok":
            st.info("No benchmark: the build failed (its error and log are in the Build log tab).")
        else:
            st.info("No benchmark for this build yet (its benchmark jobs are pending, failed or were blocked: see Sweeps).")
    else:
        table = pd.DataFrame(build.benchmarks).drop(columns=["raw_ms"])
        for memory, shown in (("peak_host_memory_bytes", "host MB"), ("peak_device_memory_bytes", "device MB")):
            table.insert(table.columns.get_loc(memory), shown, pd.to_numeric(table.pop(memory)) / 1e6)
        st.dataframe(table, hide_index=True, column_config={
            "host MB": st.column_config.NumberColumn(format="%.0f", help="peak host memory opening and timing the engine added"),
            "device MB": st.column_config.NumberColumn(format="%.0f", help="this benchmark's process on its GPU (GPU benchmarks)")})
        timed = [b for b in build.benchmarks if b["raw_ms"]]
        if timed:
            batch = st.radio("Batch size", [b["batch_size"] for b in timed], horizontal=True, key="histogram_batch")
            chosen = next(b for b in timed if b["batch_size"] == batch)
            figure = go.Figure(go.Histogram(x=chosen["raw_ms"], nbinsx=60, name="latency"))
            for name, colour in zip(LATENCY_OBJECTIVES, ("green", "red", "blue"), strict=False):
                if chosen[name] is not None:
                    figure.add_vline(x=chosen[name], line_dash="dash", line_color=colour, annotation_text=name)
            figure.update_layout(xaxis_title="latency per iteration (ms)", yaxis_title="iterations", height=360,
                                 margin={"l": 10, "r": 10, "t": 30, "b": 10})
            st.plotly_chart(figure, key="histogram")
with tabs[1]:
    if build.fidelity is None:
        st.info("No fidelity measurement for this build.")
    else:
        st.dataframe(pd.DataFrame([build.fidelity]), hide_index=True)
        if build.flips:
            st.markdown(f"**Flipped images** ({len(build.flips)}): judge images whose top-1 class differs from fp32's, "
                        "surest of fp32's first")
            st.caption(f"fp32 margin: fp32's softmax p1 - p2 on the image; confident: at least {CONFIDENT_MARGIN}, a flip the "
                       "evidence rule counts against the build, unless fp32 flips it too under its own 2-pixel shift (docs/verdicts.md).")
            st.dataframe(pd.DataFrame([{"image": f.image, "fp32 margin": f.reference_margin, "confident": f.confident,
                                        "fp32 flips it too": f.reference_flips_too} for f in build.flips]),
                         hide_index=True, key="flipped_images",
                         column_config={"fp32 margin": st.column_config.NumberColumn(format="%.4f")})
        elif build.fidelity.get("status") == "ok":
            st.caption("No judge image flipped, or this row was measured before per-image evidence was recorded.")
with tabs[2]:
    if build.manifest:
        st.json(build.manifest, expanded=2)
    else:
        st.info("No manifest: the build did not produce an engine.")
with tabs[3]:
    st.json(build.options)
with tabs[4]:
    st.code(build.log or "(no log recorded)", language=None)
with tabs[5]:
    if build.layers:
        st.dataframe(pd.DataFrame(build.layers), hide_index=True)
    else:
        st.info("This backend's manifest carries no layer information.")

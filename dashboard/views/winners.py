"""Winners: per model x target x batch size, the fastest build that meets a fidelity constraint, with its
verdict (is it really faster than the runner-up?), Pareto charts on the constrained metric, the builds
of targets nothing here can time, and the sweep's report to download."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data
from dashboard.downloads import Download, engine_downloads, watch_engines
from farm.results.cheapest import cheapest
from farm.results.metrics import CONSTRAINED_METRICS, METRICS, OBJECTIVES, Objective
from farm.results.evidence import RULES
from farm.results.labels import EngineLabels
from farm.results.select import RANDOM_WEIGHTS, Candidate, Constraints, answers, pareto_front
from farm.results.verdict import short

# An objective in words, and as a chart's axis with its unit (farm.results.metrics).
OBJECTIVE_NAMES: dict[str, str] = {m: f"{m} latency" if METRICS[m].unit == "ms" else m for m in OBJECTIVES} | {"cost": "cost"}
AXIS: dict[str, str] = {m: f"{OBJECTIVE_NAMES[m]} ({METRICS[m].unit})" for m in OBJECTIVES} | {"cost": "cost (USD per million inferences)"}
COLOURS = {"tensorrt": "#76b900", "onnxruntime": "#1f77b4", "torch": "#ee4c2c"}
SYMBOLS = {"fp32": "circle", "fp16": "diamond", "bf16": "diamond-open", "int8": "square", "fp8": "triangle-up"}
# The constraint a page sets, per metric of CONSTRAINED_METRICS: the slider's label, range and default; accuracy drop is a maximum.
SLIDERS = (("Minimum top-1 agreement with fp32", 0.5, 1.0, 0.99), ("Minimum mean cosine with fp32", 0.9, 1.0, 0.999),
           ("Maximum labelled accuracy drop", 0.0, 0.2, 0.01))
CONSTRAINTS = dict(zip(CONSTRAINED_METRICS, SLIDERS, strict=True))

st.title("Winners")
at = data.where()
data.require(at, "benchmarks")

sweeps = data.sweeps(at)
sweep_names = {None: "all sweeps"} | {int(r.id): f"#{r.id} {r.name}" for r in sweeps.itertuples()}
controls = st.columns([2, 2, 3, 2, 2])
objective: Objective = controls[0].radio("Objective", OBJECTIVES, format_func=OBJECTIVE_NAMES.__getitem__, key="objective", horizontal=True)
metric = controls[1].selectbox("Constraint", list(CONSTRAINTS), format_func=lambda m: METRICS[m].header, key="constraint")
label, low, high, default = CONSTRAINTS[metric]
floor = controls[2].slider(label, min_value=low, max_value=high, value=default, step=0.001, format="%.3f", key=f"floor-{metric}"
                           if metric != "top1_agreement" else "floor")
sweep_id = controls[3].selectbox("Sweep", list(sweep_names), format_func=sweep_names.__getitem__, key="winners_sweep")
rule = controls[4].radio("Eligibility", RULES, key="eligibility", horizontal=True,
                         help="evidence: no confident flips, and the 95% Wilson upper bound of agreement (or fp32's own noise "
                              "floor) reaches the floor; threshold: the bare share (docs/verdicts.md)")
constraints = {"top1_agreement": Constraints(min_top1_agreement=floor, rule=rule), "cosine": Constraints(None, min_cosine=floor, rule=rule),
               "accuracy": Constraints(None, max_accuracy_drop=floor, rule=rule)}[metric]

found = data.found_candidates(at, sweep_id)
groups = answers(found, objective, constraints, data.rejected(at, sweep_id))
best = [a.winner for a in groups if a.winner is not None]
build_only = data.untimed(at, sweep_id)
excluded = [(a, x) for a in groups for x in a.excluded]
if not best and not build_only and not excluded:
    st.warning(f"No benchmarked build meets {constraints.describe()}: relax the constraint, or run a sweep with fidelity enabled.")
    st.stop()
st.caption(f"Rule: {constraints.rule_text()}.")


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


if best:
    # Each table fits a 1280-px window: the answer (who won, is it really faster, and than what) first, its
    # numbers second. A build reads as its short key and the options that tell this page's builds apart;
    # the full label is beside its download button.
    labels = EngineLabels.among([*best, *(r for c in best for r in c.rivals)])
    where_ = [{"model": c.model, "target": c.target, "batch": c.batch_size} for c in best]
    st.dataframe(
        pd.DataFrame([w | {"winner": labels.named(c, c.build_key), "verdict": short(c.verdict),
                           "runner-up": labels.named(c.rivals[0], c.rivals[0].build_key) if c.rivals else "-"}
                      for w, c in zip(where_, best, strict=True)]),
        hide_index=True,
        column_config={
            "model": st.column_config.TextColumn(width=100), "target": st.column_config.TextColumn(width=120),
            "batch": st.column_config.NumberColumn(width=45),
            "winner": st.column_config.TextColumn(width=195, help="short key (`farm pull` and the Engine page take it), then the engine"),
            "verdict": st.column_config.TextColumn(width=145, help="is the winner really faster than the runner-up? (Verdicts below)"),
            "runner-up": st.column_config.TextColumn(width=190),
        },
        key="winners_table",
    )
    st.dataframe(
        pd.DataFrame([w | {"key": c.short_key, "p50 ms": c.p50, "p99 ms": c.p99, "samples/s": c.throughput, "USD/M": c.value("cost"),
                           "agreement": c.agreement,
                           "vs torch": _times(c.speedup_vs_torch), "vs fp32": _times(c.speedup_vs_fp32),
                           "quantized": "-" if c.quantized_fraction is None else f"{c.quantized_fraction:.0%}"}
                      for w, c in zip(where_, best, strict=True)]),
        hide_index=True,
        column_config={
            "model": st.column_config.TextColumn(width=100), "target": st.column_config.TextColumn(width=100),
            "batch": st.column_config.NumberColumn(width=45), "key": st.column_config.TextColumn(width=75),
            "p50 ms": st.column_config.NumberColumn(format="%.3f", width=65),
            "p99 ms": st.column_config.NumberColumn(format="%.3f", width=65),
            "samples/s": st.column_config.NumberColumn(format="%.1f", width=75),
            "USD/M": st.column_config.NumberColumn(format="%.4f", width=65, help="USD per million inferences at the target's price (docs/cost.md)"),
            "agreement": st.column_config.TextColumn(width=105, help="top-1 agreement with fp32 as k/n [95% Wilson interval]"),
            "vs torch": st.column_config.TextColumn(width=60), "vs fp32": st.column_config.TextColumn(width=60),
            "quantized": st.column_config.TextColumn(width=65),
        },
        key="winners_numbers",
    )
    st.subheader("Verdicts")
    st.caption("Is each winner really faster than its runner-up, and how noisy is fp32 against itself?")
    for c in best:
        if c.verdict is not None:
            noise = f" ({c.evidence.noise.describe()})" if c.evidence and c.evidence.noise else ""
            st.markdown(f"**{c.model}** on `{c.target}`, batch {c.batch_size}: {c.verdict.note or c.verdict.outcome}{noise}")
    if any(c.random_weights for c in best):
        st.caption(f"Random-weight models ({', '.join(sorted({c.model for c in best if c.random_weights}))}): {RANDOM_WEIGHTS}.")
    for note in dict.fromkeys(f"{a.model}: {a.speed_only}: a speed result over the builds with finite outputs" for a in groups if a.speed_only):
        st.warning(note)

if best:
    st.subheader("Cheapest target under a p99 bound")
    bound = st.number_input("p99 bound (ms)", min_value=0.001, value=float(round(max(c.p99 for c in best), 3)) or 10.0, step=1.0,
                            format="%.3f", key="p99_bound", help="the p99 latency of one batch the deployment must stay under")
    st.caption("Per model, each target's cheapest build and batch size whose p99 stays under the bound and that meets the constraint; "
               "cheapest target first. Prices: USD per hour per GPU, or per CPU core a benchmark used (docs/cost.md); a sweep's "
               "`prices:` replace farm's defaults.")
    offers = [{"model": a.model, "target": o.target, "batch": o.candidate.batch_size if o.candidate else None,
               "engine": o.candidate.label if o.candidate else o.why, "p99 ms": o.candidate.p99 if o.candidate else None,
               "USD/h": o.candidate.usd_per_hour if o.candidate else None, "USD/M": o.cost,
               "answer": "cheapest" if o is a.answer else ""} for a in cheapest(found, bound, constraints) for o in a.offers]
    st.dataframe(pd.DataFrame(offers), hide_index=True, key="cheapest_table",
                 column_config={"p99 ms": st.column_config.NumberColumn(format="%.3f"), "USD/h": st.column_config.NumberColumn(format="%.2f"),
                                "USD/M": st.column_config.NumberColumn(format="%.4f")})

if excluded:
    st.subheader("Excluded and rejected")
    st.caption("Every build that missed eligibility under this rule, and every variant judged not viable before any build, "
               "with its agreement (k/n and 95% Wilson interval), confident flips and reason.")
    seen_lines: set[str] = set()
    rows = []
    for a, x in excluded:
        if x.stage == "variant" and x.line(constraints.confident_margin) in seen_lines:
            continue
        seen_lines.add(x.line(constraints.confident_margin))
        rows.append({"model": a.model, "target": a.target if x.stage != "variant" else "(any)",
                     "batch": a.batch_size if x.stage != "variant" else None, "what": x.stage, "engine": x.engine,
                     "evidence": x.evidence.describe(constraints.confident_margin) if x.evidence else "-",
                     "reason": "; ".join(x.reasons), "vs winner": x.versus_winner or "-"})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="excluded_table")

if build_only:
    st.subheader("Built, not timed")
    st.caption("Engines built ahead of time for GPUs this cluster does not have (TensorRT-RTX): nothing here can run or time "
               "them, so they have sizes and build times, and no latency or fidelity. `farm pull --target rtx:sm_NN` hands one out.")
    st.dataframe(pd.DataFrame([{"model": u.model, "target": u.target, "engine": u.label, "precision": u.precision,
                                "MB": None if u.engine_bytes is None else u.engine_bytes / 1e6, "build s": u.build_seconds}
                               for u in build_only]), hide_index=True, key="untimed_table",
                 column_config={"MB": st.column_config.NumberColumn(format="%.1f"), "build s": st.column_config.NumberColumn(format="%.1f")})

if sweep_id is not None:
    st.download_button("Report of this sweep (HTML)", data=data.report(at, int(sweep_id), "html"), file_name=f"farm-sweep-{sweep_id}.html",
                       mime="text/html", on_click="ignore", key="report-html", icon=":material/description:")

if not best:
    st.stop()

st.subheader("Download")
st.caption("Each bundle is a ZIP of the engine file and its manifest.json (with the engine's sha256), made when you click.")
drawn: dict[str, data.EngineCheck | None] = {}
for c in best:
    if c.build_key in drawn:
        continue
    batches = ", ".join(str(w.batch_size) for w in best if w.build_key == c.build_key)
    bundle = Download("Engine bundle", data.bundle(at, c.build_key), f"{c.model}-{c.build_key[:8]}.zip", "application/zip",
                      f"download-{c.build_key}", ":material/download:")
    drawn[c.build_key] = engine_downloads(at, c.build_key, [bundle], width="stretch",
                                          caption=f"**{c.model}** on `{c.target}` (batch {batches}): `{c.label}`")
watch_engines(at, drawn)


def pareto_chart(group: list[Candidate], objective: Objective, floor: float, winner: Candidate | None) -> go.Figure:
    y_of = {"top1_agreement": lambda c: c.agreement_share, "cosine": lambda c: c.cosine,
            "accuracy": lambda c: None if c.value("accuracy") is None or c.value("reference_accuracy") is None
            else (c.value("reference_accuracy") or 0.0) - (c.value("accuracy") or 0.0)}[metric]
    measured = [c for c in group if y_of(c) is not None]
    front = pareto_front(measured, objective, y_of, higher_is_better=metric != "accuracy")

    def x(c: Candidate) -> float:
        return c.value(objective) or 0.0

    figure = go.Figure()
    for backend in sorted({c.backend for c in measured}):
        mine = [c for c in measured if c.backend == backend]
        figure.add_trace(go.Scatter(
            x=[x(c) for c in mine], y=[y_of(c) for c in mine], mode="markers", name=backend,
            marker={"size": 11, "color": COLOURS.get(backend, "gray"), "symbol": [SYMBOLS.get(c.precision, "x") for c in mine]},
            text=[f"{c.precision} {' '.join(f'{k}={v}' for k, v in c.options.items())}" for c in mine],
            hovertemplate="%{text}<br>%{x:.3f}<br>" + METRICS[metric].header + " %{y:.4f}<extra>" + backend + "</extra>",
        ))
    figure.add_trace(go.Scatter(x=[x(c) for c in front], y=[y_of(c) for c in front], mode="lines",
                                name="Pareto front", line={"dash": "dot", "color": "gray"}))
    if winner is not None:
        figure.add_trace(go.Scatter(x=[x(winner)], y=[y_of(winner)], mode="markers", name="winner",
                                    marker={"symbol": "star", "size": 18, "color": "gold", "line": {"width": 1, "color": "black"}}))
    figure.add_hline(y=floor, line_dash="dash", line_color="red", annotation_text=f"{'ceiling' if metric == 'accuracy' else 'floor'} {floor:.3f}")
    figure.update_layout(xaxis_title=AXIS[objective], yaxis_title=METRICS[metric].header + (" drop" if metric == "accuracy" else ""), height=360, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         legend={"orientation": "h", "y": -0.25})
    return figure


st.subheader(f"{OBJECTIVE_NAMES[objective].capitalize()} vs {METRICS[metric].header}")
st.caption("One point per build (colour: backend; circle fp32, diamond fp16, open diamond bf16, square int8), the Pareto front "
           "dotted, the winner a star; the vertical axis is the metric the constraint is on.")
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

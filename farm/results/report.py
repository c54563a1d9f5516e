"""One file a person can mail about one sweep: `farm report SWEEP --format csv|html|json`.

It holds the winners with their verdicts (by the sweep's own objective and constraints), every build
of the sweep with its numbers and fidelity (int8 and the excluded ones too), what the rule excluded
and why, the failures, how noisy the measurements were, the environment (the targets with their
CPUs, GPUs and backend versions), and charts: latency against batch size per engine, and the
latency-fidelity Pareto front. The dashboard offers the same file.

report_data() is the content; json is it as it is (raw numbers), csv and html are its tables with
numbers formatted as the CLI prints them (farm.results.metrics Metric.format). The html is one
self-contained file: inline style and inline SVG (farm.results.charts), nothing fetched.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from farm.results import charts, progress, queries, rows
from farm.results.metrics import BUILD_METRICS, LATENCY_OBJECTIVES, METRICS, REPORT_METRICS, Objective, values
from farm.results.select import (RANDOM_WEIGHTS, Answer, Candidate, Constraints, answers, candidates, pareto_front, prices_for,
                                 rejected_variants, untimed)
from farm.results.verdict import short

FORMATS = ("csv", "html", "json")
SHORT_KEY = 8  # a build's short key: what farm pull and the dashboard accept
# Columns that explain a metric, shown right after it.
EXPLAINING = {"p50": ("p50 interval ms",), "top1_agreement": ("agreement", "confident flips", "noise floor")}
COLUMNS = ("model", "target", "batch", "engine", "build", *(h for m in REPORT_METRICS for h in (METRICS[m].header, *EXPLAINING.get(m, ()))),
           "vs torch", "verdict", "runner-up", "tied with", "verdict note", "note")
BUILD_COLUMNS = ("build", "model", "target", "batch", "engine", "status", "answer", *(METRICS[m].header for m in BUILD_METRICS))
EXCLUDED_COLUMNS = ("model", "target", "batch", "stage", "engine", "build", "evidence", "reason", "vs winner")
FAILURE_COLUMNS = ("stage", "job", "error", "node")
NOISE_COLUMNS = ("model", "build", "engine", "target", "batch", METRICS["cv"].header, METRICS["converged"].header, "p50 interval ms")
UNTIMED_COLUMNS = ("build", "model", "target", "engine", "MB", "build s")
ENVIRONMENT_COLUMNS = ("target", "kind", "host", "CPU", "GPUs", "backends")
LONG = ("verdict note", "note")  # sentences: listed under the winners table in html, not squeezed into cells
NOT_IN_HTML_WINNERS = (*LONG, "noise floor")  # the noise floor is the model's, listed once under Noise


class ReportError(ValueError):
    """No such sweep, or no such format; the message is one line."""


@dataclass(frozen=True)
class Section:
    """One table of the report, the same in csv and html: where its rows are in report_data(), its columns, and
    the sentence that replaces it when it has no rows."""

    id: str
    title: str
    columns: tuple[str, ...]
    rows: Callable[[dict[str, Any]], list[dict[str, Any]]]
    empty: str


SECTIONS = (
    Section("winners", "Winners and verdicts", COLUMNS, lambda d: d["winners"], "No build met the constraints: there is no winner."),
    Section("builds", "Every build", BUILD_COLUMNS, lambda d: d["builds"], "The sweep has no build."),
    Section("excluded", "Excluded and rejected", EXCLUDED_COLUMNS, lambda d: d["excluded"],
            "Nothing was excluded: every timed build met the rule, and no variant was rejected."),
    Section("failures", "Failures", FAILURE_COLUMNS, lambda d: d["failures"], "No job failed."),
    Section("noise", "Noise", NOISE_COLUMNS, lambda d: d["noise"]["list"],
            "No benchmark was flagged noisy: every coefficient of variation was within the benchmark's threshold, and every "
            "benchmark converged."),
    Section("untimed", "Built, not timed", UNTIMED_COLUMNS, lambda d: d["built_not_timed"],
            "Every build was timed where it was built."),
    Section("environment", "Environment", ENVIRONMENT_COLUMNS, lambda d: d["environment"], "No target is recorded."),
)


def report_data(session: Session, sweep_id: int) -> dict[str, Any]:
    """Everything the report shows, as plain data (the JSON format is exactly this)."""
    sweep = queries.sweep(session, sweep_id)
    if sweep is None:
        raise ReportError(f"no sweep {sweep_id}")
    spec = sweep.spec or {}
    objective = (spec.get("selection") or {}).get("objective", "p50")
    fidelity = spec.get("fidelity") or {}
    constraints = Constraints(fidelity.get("min_top1_agreement", 0.99), fidelity.get("min_cosine"), fidelity.get("max_accuracy_drop"),
                              fidelity.get("eligibility", "evidence"), fidelity.get("confident_margin", 0.1))
    margin = constraints.confident_margin
    found = candidates(session, sweep_id=sweep_id, prices=prices_for(session, sweep_id))
    refused = rejected_variants(session, sweep_id=sweep_id)
    groups = answers(found, objective, constraints, refused)
    chosen = [a.winner for a in groups if a.winner is not None]
    built_only = untimed(session, sweep_id=sweep_id)
    every = rows.sweep_builds(session, sweep_id)
    # the flag the benchmark stored (workers.bench: a cv above its threshold, or windows that never agreed)
    flagged = {(b.build_key, b.batch_size) for *_, b, _f in every if b is not None and b.status == "ok" and (b.noisy or b.converged is False)}
    noisy = [c for c in found if (c.build_key, c.batch_size) in flagged]
    return {
        "sweep": {"id": sweep.id, "name": sweep.name, "status": sweep.status, "spec_path": sweep.spec_path,
                  "started": _moment(sweep.started_at), "finished": _moment(sweep.finished_at)},
        "objective": objective,
        "constraints": asdict(constraints),
        "rule": constraints.rule_text(),
        "winners": [_winner(c, found, margin) for c in chosen],
        "builds": _builds(every, groups, {u.build_key for u in built_only}),
        "excluded": _excluded(groups, margin),
        "rejected": [x.to_json(margin) for x in refused],
        "noise": {"benchmarks": len(found), "noisy": len(noisy),
                  "unconverged": sum(1 for c in found if c.value("converged") is False),
                  "list": [{"model": c.model, "build": c.build_key[:SHORT_KEY], "engine": c.engine, "target": c.target,
                            "batch": c.batch_size, METRICS["cv"].header: c.value("cv"), METRICS["converged"].header: c.value("converged"),
                            "p50 interval ms": _interval(c)} for c in sorted(noisy, key=lambda c: (c.model, c.target, c.engine, c.batch_size))],
                  "floors": [{"model": model, "noise floor": text} for model, text in _noise_floors(found).items()]},
        "failures": [{"stage": f.stage, "job": f.label, "error": _one_line(f.error), "node": f.node} for f in progress.failures(session, sweep_id)],
        "built_not_timed": [asdict(u) | {"build": u.build_key[:SHORT_KEY], "engine": u.label, "MB": None if u.engine_bytes is None else u.engine_bytes / 1e6,
                                         "build s": u.build_seconds} for u in built_only],
        "environment": _environment(rows.stored_targets(session, {b.target_id for _, b, *_ in every if b is not None}), every),
        "charts": _charts(found, objective if objective in LATENCY_OBJECTIVES else "p50", constraints.min_top1_agreement),
        "retiming": {"groups": sum(1 for c in chosen if c.verdict and c.verdict.method == "interleaved"),
                     "reordered": sum(1 for c in chosen if c.verdict and c.verdict.reordered)},
        "notes": ([RANDOM_WEIGHTS] if any(c.random_weights for c in chosen) else [])
                 + list(dict.fromkeys(f"{a.model}: {a.speed_only}: a speed result over the builds with finite outputs"
                                      for a in groups if a.speed_only)),
    }


def _moment(when: datetime | None) -> str | None:
    return None if when is None else f"{when:%Y-%m-%d %H:%M:%S} UTC"  # stored in UTC (SQLite gives it back naive)


def _one_line(error: str | None) -> str | None:
    return error.strip().splitlines()[0] if error and error.strip() else error


def _interval(c: Candidate) -> list[float] | None:
    low, high = c.value("p50_low"), c.value("p50_high")
    return None if low is None or high is None else [low, high]


def _winner(c: Candidate, found: list[Candidate], margin: float) -> dict[str, Any]:
    e = c.evidence
    # the agreement column is the share the floor read (a detector's box recall); a timing not measured reads 0
    shown = {"top1_agreement": c.agreement_share, "p50": c.p50, "p99": c.p99, "throughput": c.throughput, "cv": c.cv}
    cells = {METRICS[m].header: shown[m] if m in shown else c.value(m) for m in REPORT_METRICS} | {
        "p50 interval ms": _interval(c), "agreement": c.agreement,
        "confident flips": len(e.confident_flips(margin)) if e is not None and e.margins else None,
        "noise floor": e.noise.describe() if e is not None and e.noise is not None else None}
    group = {x.build_key: x.engine for x in found if (x.model, x.target, x.batch_size) == (c.model, c.target, c.batch_size)}
    tied = [group[k] for k in (c.verdict.tied if c.verdict else ()) if k != c.build_key and k in group]
    return {
        "model": c.model, "target": c.target, "batch": c.batch_size, "engine": c.engine, "build": c.build_key[:SHORT_KEY],
        "build_key": c.build_key, **{column: cells[column] for column in COLUMNS if column in cells}, "vs torch": c.speedup_vs_torch,
        "verdict": short(c.verdict), "runner-up": c.runner_up, "tied with": tied or None,
        "verdict note": c.verdict.note if c.verdict else None, "note": c.reference_note, "random weights": c.random_weights,
        "evidence": e.to_json(margin) if e is not None else None,
    }


def _roles(groups: list[Answer]) -> dict[tuple[str, int], str]:
    """What each timed build at each batch size is in its group's answer: winner, tied, runner-up or excluded."""
    found: dict[tuple[str, int], str] = {}
    for a in groups:
        for x in a.excluded:
            if x.build_key is not None:
                found[(x.build_key, a.batch_size)] = "excluded"
        w = a.winner
        if w is None or w.verdict is None:
            continue
        for key in w.verdict.tied:
            found[(key, a.batch_size)] = "tied"
        if w.verdict.runner_up and w.verdict.runner_up != w.build_key and w.verdict.outcome != "tie":
            found[(w.verdict.runner_up, a.batch_size)] = "runner-up"
        found[(w.build_key, a.batch_size)] = "winner" if w.verdict.outcome != "tie" else "tie (answered)"
    return found


def _builds(every: list[tuple[Any, ...]], groups: list[Answer], build_only: set[str]) -> list[dict[str, Any]]:
    """Every build job of the sweep, a row per batch size it was timed at: its status, numbers and fidelity."""
    roles = _roles(groups)
    found = []
    for job, build, variant, model, bench, fid in every:
        if build is None:  # never built: pending, running, or blocked by a failed export
            found.append({"build": job.key[:SHORT_KEY], "build_key": job.key, "model": None, "target": None, "batch": None,
                          "engine": job.label, "status": job.state, "answer": None} | {METRICS[m].header: None for m in BUILD_METRICS})
            continue
        details = variant.details or {}
        # a Candidate for its engine label and metric names; the batch size of a build never timed is shown as none
        c = Candidate(build.key, build.label, model.name, variant.precision, build.backend, build.options, build.target_id,
                      bench.batch_size if bench is not None else 0, build.engine_sha256,
                      values(bench if bench is not None and bench.status == "ok" else None, "benchmark")
                      | values(fid if fid is not None and fid.status == "ok" else None, "fidelity"),
                      method=variant.method, layout_label=details.get("layout_label", "") if variant.precision == "int8" else "",
                      quantized_fraction=details.get("quantized_fraction") if variant.method else None)
        status = _status(build, bench, fid, build.key in build_only)
        found.append({"build": build.key[:SHORT_KEY], "build_key": build.key, "model": c.model, "target": c.target,
                      "batch": bench.batch_size if bench is not None else None, "engine": c.engine, "status": status,
                      "answer": roles.get((build.key, c.batch_size), "eligible" if status == "ok" else None)}
                     | {METRICS[m].header: c.value(m) for m in BUILD_METRICS})
    return found


def _status(build: Any, bench: Any, fid: Any, build_only: bool) -> str:
    """The first thing that did not finish, else ok."""
    if build.status != "ok":
        return f"build {build.status}"
    if bench is None:
        return "built, not timed" if build_only else "built"
    if bench.status != "ok":
        return f"benchmark {bench.status}"
    if fid is None or fid.status != "ok":
        return f"fidelity {fid.status}" if fid is not None else "timed, no fidelity"
    return "ok"


def _excluded(groups: list[Answer], margin: float) -> list[dict[str, Any]]:
    """Every candidate the rule excluded, per group, and each rejected variant once."""
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for a in groups:
        for x in a.excluded:
            if x.stage == "variant" and (x.model + x.line(margin)) in seen:
                continue
            seen.add(x.model + x.line(margin))
            found.append({"model": a.model, "target": a.target if x.stage != "variant" else None,
                          "batch": a.batch_size if x.stage != "variant" else None, "stage": x.stage, "engine": x.engine,
                          "build": x.build_key[:SHORT_KEY] if x.build_key else None,
                          "evidence": x.evidence.describe(margin) if x.evidence else None, "reason": "; ".join(x.reasons),
                          "vs winner": x.versus_winner, "detail": x.to_json(margin)})
    return found


def _noise_floors(found: list[Candidate]) -> dict[str, str]:
    """What fp32 itself does to each model's images under a shift: no build is blamed for as much."""
    return {c.model: c.evidence.noise.describe() for c in found if c.evidence is not None and c.evidence.noise is not None}


def _environment(targets: list[Any], every: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Each target with its host, CPU, GPUs and the backend versions its node reported (else those its builds name)."""
    built: dict[str, dict[str, str]] = {}
    for _job, build, *_ in every:
        if build is not None and build.backend_version:
            built.setdefault(build.target_id, {}).setdefault(build.backend, build.backend_version)
    found = []
    for t in sorted(targets, key=lambda t: t.id):
        d = t.description or {}
        cpu = d.get("cpu") or {}
        gpus = "; ".join(f"{g.get('name')} (sm {g.get('compute_capability')}, {g.get('memory_bytes', 0) / 2**30:.0f} GiB, driver "
                         f"{g.get('driver')})" for g in d.get("gpus") or ())
        versions = built.get(t.id, {}) | (d.get("backends") or {})
        found.append({"target": t.id, "kind": t.kind, "host": d.get("hostname"),
                      "CPU": (f"{cpu.get('model')} ({cpu.get('arch')}, {cpu.get('physical_cores')} cores / {cpu.get('logical_cores')} "
                              f"threads, {' '.join(cpu.get('isa') or ()) or 'no SIMD flags'})") if cpu else None,
                      "GPUs": gpus or None, "backends": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or None,
                      "description": d})
    return found


def _charts(found: list[Candidate], latency: Objective, floor: float | None) -> dict[str, Any]:
    """The chart data: per (model, target) the latency of each build against batch size, and at the smallest batch
    size every build on the latency-fidelity plane with the Pareto front marked and the agreement floor."""
    by_group: dict[tuple[str, str], list[Candidate]] = {}
    for c in found:
        by_group.setdefault((c.model, c.target), []).append(c)
    curves, planes = [], []
    for (model, target), group in sorted(by_group.items()):
        series: dict[str, dict[str, Any]] = {}
        for c in sorted(group, key=lambda c: (c.engine, c.batch_size)):
            if c.value(latency) is not None:
                series.setdefault(c.build_key, {"engine": c.engine, "build": c.build_key[:SHORT_KEY], "points": []})["points"].append(
                    [c.batch_size, c.value(latency)])
        curves.append({"model": model, "target": target, "metric": latency, "series": list(series.values())})
        batch = min(c.batch_size for c in group)
        at = [c for c in group if c.batch_size == batch and c.agreement_share is not None and c.value(latency) is not None]
        if len(at) < 2:
            continue  # one build is no trade-off
        front = {c.build_key for c in pareto_front(at, latency)}
        planes.append({"model": model, "target": target, "batch": batch, "x": latency, "y": at[0].agreement_metric, "floor": floor,
                       "points": [{"engine": c.engine, "build": c.build_key[:SHORT_KEY], "x": c.value(latency), "y": c.agreement_share,
                                   "front": c.build_key in front} for c in at]})
    return {"latency": curves, "pareto": planes}


def render_report(session: Session, sweep_id: int, format: str) -> str:
    if format not in FORMATS:
        raise ReportError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    data = report_data(session, sweep_id)
    if format == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    if format == "csv":
        return _csv(data)
    return _html(data)


# Formatting: as the CLI prints (farm.results.metrics, farm.cli.terminal), never a raw float or a Python literal.
BY_HEADER = {m.header: m for m in METRICS.values()}
FORMATTERS: dict[str, Callable[[Any], str]] = {
    "p50 interval ms": lambda v: " - ".join(METRICS["p50"].format(x) for x in v),
    "vs torch": lambda v: f"{v:.2f}x",
    "MB": lambda v: f"{v:.1f}",
    "build s": lambda v: f"{v:.1f}",
    "tied with": lambda v: "; ".join(v),
}


def text(column: str, value: Any) -> str:
    """One cell as a person reads it: `-` for nothing, yes/no, metrics by their own format."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column in FORMATTERS:
        return FORMATTERS[column](value)
    if column in BY_HEADER and isinstance(value, (int, float)):
        return BY_HEADER[column].format(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _columns(columns: tuple[str, ...], found: list[dict[str, Any]]) -> tuple[str, ...]:
    """`columns` less those empty in every row (a classifier has no box recall, a detector no top-1; evidence recorded
    before it existed): the json keeps them, a table of dashes says nothing."""
    return tuple(c for c in columns if any(row.get(c) is not None for row in found))


def _csv(data: dict[str, Any]) -> str:
    """Every section of the html as a block: a `# title` row, a header row and its rows (or its one sentence)."""
    out = io.StringIO()
    writer = csv.writer(out)
    sweep = data["sweep"]
    writer.writerow(["# sweep", sweep["id"], sweep["name"], sweep["status"], "objective", data["objective"],
                     "constraints", Constraints(**data["constraints"]).describe()])
    for number, section in enumerate(SECTIONS):
        found = section.rows(data)
        columns = _columns(section.columns, found)
        if number:  # the winners' header is the second line, as it always was
            writer.writerow([])
            writer.writerow([f"# {section.title.lower()}"])
        if not found:
            writer.writerow([section.empty])
            continue
        writer.writerow(columns)
        writer.writerows([text(c, row[c]) for c in columns] for row in found)
    writer.writerow([])
    writer.writerow(["# notes"])
    writer.writerow(["about", "note"])
    writer.writerow(["rule", data["rule"]])
    writer.writerows([f"noise floor of {f['model']}", f["noise floor"]] for f in data["noise"]["floors"])
    writer.writerows(["note", note] for note in data["notes"])
    return out.getvalue()


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}h1{font-size:1.5em}h2{margin-top:1.6em;"
         "border-bottom:1px solid #ddd}table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 7px;"
         "font-size:12px;text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}"
         "tr.winner td,tr.tie td{background:#eef6ee}tr.excluded td{color:#8a4b00}.charts{display:flex;flex-wrap:wrap;gap:16px}"
         "p.note{background:#fff7e0;padding:4px 8px}")
NUMERIC = {*BY_HEADER, *FORMATTERS, "batch", "confident flips"} - {"tied with", "converged"}


def _table(columns: tuple[str, ...], found: list[dict[str, Any]], mark: str | None = None) -> str:
    """A table of `columns`; `mark` names a column whose value becomes the row's class (winner, excluded)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr class='{html.escape(_row_class(row, mark))}'>"
        + "".join(f"<td{' class=n' if c in NUMERIC else ''}>{html.escape(text(c, row[c]))}</td>" for c in columns) + "</tr>"
        for row in found)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _row_class(row: dict[str, Any], mark: str | None) -> str:
    """The first word of the row's `mark` column (winner, tie, excluded): the style colours those rows."""
    value = str(row.get(mark) or "") if mark else ""
    return value.split()[0] if value else ""


def _section(data: dict[str, Any], section: Section, intro: str = "", after: str = "", columns: tuple[str, ...] | None = None,
             mark: str | None = None) -> str:
    found = section.rows(data)
    shown = _table(_columns(columns or section.columns, found), found, mark) if found else f"<p>{html.escape(section.empty)}</p>"
    return f"<h2 id='{section.id}'>{html.escape(section.title)}</h2>{intro}{shown}{after}"


def _chart_svgs(data: dict[str, Any]) -> str:
    def fmt(metric: str) -> Callable[[float], str]:
        return METRICS[metric].format

    curves = [charts.line_chart(f"{c['model']} @ {c['target']}", [charts.Series(s["engine"], tuple((p[0], p[1]) for p in s["points"]))
                                                                  for s in c["series"]],
                                "batch size", METRICS[c["metric"]].header, fmt(c["metric"]))
              for c in data["charts"]["latency"] if c["series"]]
    planes = [charts.pareto_chart(f"{p['model']} @ {p['target']}, batch {p['batch']}",
                                  [charts.Point(q["engine"], q["x"], q["y"], q["front"]) for q in p["points"]],
                                  METRICS[p["x"]].header, METRICS[p["y"]].header, fmt(p["x"]), fmt(p["y"]), p["floor"])
              for p in data["charts"]["pareto"]]
    return ("<h2 id='charts'>Charts</h2><h3>Latency against batch size</h3><p>One line per build (engine), per model and target.</p>"
            + (f"<div class='charts'>{''.join(curves)}</div>" if curves else "<p>No build was timed: there is no curve.</p>")
            + "<h3>Latency against fidelity</h3><p>Every timed build with a fidelity measurement at the smallest batch size; "
              "the numbered builds are the Pareto front: nothing else is both faster and more faithful.</p>"
            + (f"<div class='charts'>{''.join(planes)}</div>" if planes else "<p>No model and target has two builds with a fidelity "
               "measurement: there is no trade-off to draw.</p>"))


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


NAVIGATION = ((SECTIONS[0].id, SECTIONS[0].title), ("charts", "Charts"), *((s.id, s.title) for s in SECTIONS[1:]))


def _html(data: dict[str, Any]) -> str:
    sweep = data["sweep"]
    e = html.escape
    constraints = Constraints(**data["constraints"]).describe()
    sections = {s.id: s for s in SECTIONS}
    notes = "".join(f"<li>{e(w['model'])} @ {e(w['target'])} batch {w['batch']}: {e(w[column])}</li>"
                    for w in data["winners"] for column in LONG if w[column])
    noise = data["noise"]
    floors = "".join(f"<li>{e(f['model'])}: {e(f['noise floor'])}</li>" for f in noise["floors"])
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>farm sweep {sweep['id']} ({e(sweep['name'])})</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep {sweep['id']}: {e(sweep['name'])}</h1>",
        f"<p>{e(sweep['status'])}; started {e(sweep['started'] or '-')}, finished {e(sweep['finished'] or '-')}; spec "
        f"{e(sweep['spec_path'])}; winners by {e(data['objective'])} under {e(constraints)}. {_count(len(data['builds']), 'build row')}, "
        f"{_count(len(data['winners']), 'answer')}, {_count(len(data['failures']), 'failure')}.</p>",
        "".join(f"<p class='note'><b>Note:</b> {e(n)}</p>" for n in data["notes"]),
        "<nav>" + " · ".join(f"<a href='#{i}'>{e(title)}</a>" for i, title in NAVIGATION) + "</nav>",
        _section(data, sections["winners"], columns=tuple(c for c in COLUMNS if c not in NOT_IN_HTML_WINNERS),
                 after=f"<ul>{notes}</ul>" if notes else ""),
        _chart_svgs(data),
        _section(data, sections["builds"], "<p>Every build the sweep asked for, one row per batch size it was timed at; "
                 "answer: its part in its group's answer.</p>", mark="answer"),
        _section(data, sections["excluded"], f"<p>Rule: {e(data['rule'])}.</p>"),
        _section(data, sections["failures"]),
        _section(data, sections["noise"], f"<p>{noise['noisy']} of {noise['benchmarks']} benchmarks are noisy (flagged when timed: a "
                 f"coefficient of variation above the benchmark's threshold, or stability windows that never "
                 f"agreed: {noise['unconverged']}).</p>",
                 after=f"<p>Noise floors (fp32 against itself):</p><ul>{floors}</ul>" if floors else ""),
        _section(data, sections["untimed"]),
        _section(data, sections["environment"]),
        f"<p>Metrics as farm.results.metrics defines them: {e(', '.join(m.header for m in METRICS.values()))}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)

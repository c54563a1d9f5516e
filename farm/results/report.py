"""One file a person can mail about one sweep: `farm report SWEEP --format csv|html|json`.

It holds the winners with their verdicts (by the sweep's own objective and constraints), how
noisy the measurements were, the failures, the builds nothing here could time, and the
environment: the targets with their CPUs, GPUs and backend versions. The dashboard offers the
same file.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from farm.results import queries
from farm.results.rows import stored_targets
from farm.results.metrics import METRICS, REPORT_METRICS
from farm.results.select import RANDOM_WEIGHTS, Answer, Candidate, Constraints, answers, candidates, rejected_variants, untimed
from farm.results.verdict import short

FORMATS = ("csv", "html", "json")
# Columns that explain a metric, shown right after it.
EXPLAINING = {"p50": ("p50 interval ms",), "top1_agreement": ("agreement", "confident flips", "noise floor")}
COLUMNS = ("model", "target", "batch", "engine", *(h for m in REPORT_METRICS for h in (METRICS[m].header, *EXPLAINING.get(m, ()))),
           "vs torch", "verdict", "runner-up", "verdict note", "note")
EXCLUDED_COLUMNS = ("model", "target", "batch", "stage", "engine", "evidence", "reason", "vs winner")


class ReportError(ValueError):
    """No such sweep, or no such format; the message is one line."""


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
    found = candidates(session, sweep_id=sweep_id)
    refused = rejected_variants(session, sweep_id=sweep_id)
    groups = answers(found, objective, constraints, refused)
    rows = [a.winner for a in groups if a.winner is not None]
    noisy = [c for c in found if (c.value("cv") or 0) > 0.05 or c.value("converged") is False]
    targets = stored_targets(session, {c.target for c in found} | {u.target for u in untimed(session, sweep_id=sweep_id)})
    return {
        "sweep": {"id": sweep.id, "name": sweep.name, "status": sweep.status, "spec_path": sweep.spec_path,
                  "started": str(sweep.started_at), "finished": str(sweep.finished_at) if sweep.finished_at else None},
        "objective": objective,
        "constraints": asdict(constraints),
        "rule": constraints.rule_text(),
        "winners": [_winner(c, constraints.confident_margin) for c in rows],
        "excluded": _excluded(groups, constraints.confident_margin),
        "rejected": [x.to_json(constraints.confident_margin) for x in refused],
        "noise": {"benchmarks": len(found), "noisy": len(noisy),
                  "unconverged": sum(1 for c in found if c.value("converged") is False),
                  "list": [{"engine": c.engine, "target": c.target, "batch": c.batch_size, "cv": c.value("cv"),
                            "converged": c.value("converged")} for c in noisy]},
        "failures": [{"stage": f.stage, "job": f.label, "error": f.error, "node": f.node} for f in queries.failures(session, sweep_id)],
        "built_not_timed": [asdict(u) for u in untimed(session, sweep_id=sweep_id)],
        "environment": [{"target": t.id, "kind": t.kind, "description": t.description} for t in targets],
        "retiming": {"groups": sum(1 for c in rows if c.verdict and c.verdict.method == "interleaved"),
                     "reordered": sum(1 for c in rows if c.verdict and c.verdict.reordered)},
        "notes": ([RANDOM_WEIGHTS] if any(c.random_weights for c in rows) else [])
                 + list(dict.fromkeys(f"{a.model}: {a.speed_only}: a speed result over the builds with finite outputs"
                                      for a in groups if a.speed_only)),
    }


def _winner(c: Candidate, margin: float) -> dict[str, Any]:
    low, high = c.value("p50_low"), c.value("p50_high")
    e = c.evidence
    # the agreement column is the share the floor read (a detector's box recall); a timing not measured reads 0
    shown = {"top1_agreement": c.agreement_share, "p50": c.p50, "p99": c.p99, "throughput": c.throughput, "cv": c.cv}
    cells = {METRICS[m].header: shown[m] if m in shown else c.value(m) for m in REPORT_METRICS} | {
        "p50 interval ms": None if low is None or high is None else [low, high], "agreement": c.agreement,
        "confident flips": len(e.confident_flips(margin)) if e is not None and e.margins else None,
        "noise floor": e.noise.describe() if e is not None and e.noise is not None else None}
    return {
        "model": c.model, "target": c.target, "batch": c.batch_size, "engine": c.engine, "build_key": c.build_key,
        **{column: cells[column] for column in COLUMNS if column in cells}, "vs torch": c.speedup_vs_torch,
        "verdict": short(c.verdict), "runner-up": c.runner_up, "verdict note": c.verdict.note if c.verdict else None,
        "note": c.reference_note, "random weights": c.random_weights, "evidence": e.to_json(margin) if e is not None else None,
    }


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
                          "evidence": x.evidence.describe(margin) if x.evidence else None, "reason": "; ".join(x.reasons),
                          "vs winner": x.versus_winner, "detail": x.to_json(margin)})
    return found


def render_report(session: Session, sweep_id: int, format: str) -> str:
    if format not in FORMATS:
        raise ReportError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    data = report_data(session, sweep_id)
    if format == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    if format == "csv":
        return _csv(data)
    return _html(data)


def _csv(data: dict[str, Any]) -> str:
    """The winners, one row each; then the failures, under a header row of their own."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["# sweep", data["sweep"]["id"], data["sweep"]["name"], data["sweep"]["status"], "objective", data["objective"],
                     "constraints", Constraints(**data["constraints"]).describe()])
    writer.writerow(COLUMNS)
    for w in data["winners"]:
        writer.writerow([_cell(w[c]) for c in COLUMNS])
    writer.writerow([])
    writer.writerow(["# excluded", "rule", data["rule"]])
    writer.writerow(EXCLUDED_COLUMNS)
    for x in data["excluded"]:
        writer.writerow([_cell(x[c]) for c in EXCLUDED_COLUMNS])
    writer.writerow([])
    writer.writerow(["# failures", "stage", "job", "error"])
    for f in data["failures"]:
        writer.writerow(["", f["stage"], f["job"], f["error"]])
    writer.writerow([])
    writer.writerow(["# built, not timed", "model", "target", "engine", "MB"])
    for u in data["built_not_timed"]:
        writer.writerow(["", u["model"], u["target"], u["label"], _cell((u["engine_bytes"] or 0) / 1e6)])
    for note in data["notes"]:
        writer.writerow(["# note", note])
    return out.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return " - ".join(_cell(v) for v in value)
    return "" if value is None else str(value)


def _table(headers: tuple[str, ...] | list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(data: dict[str, Any]) -> str:
    sweep = data["sweep"]
    constraints = Constraints(**data["constraints"]).describe()
    environment = [[e["target"], e["kind"], json.dumps((e["description"] or {}).get("backends", {})),
                    (e["description"] or {}).get("cpu", {}).get("model", "")] for e in data["environment"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>farm sweep {sweep['id']} ({html.escape(sweep['name'])})</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}th{background:#f4f4f4}</style></head><body>",
        f"<h1>Sweep {sweep['id']}: {html.escape(sweep['name'])}</h1>",
        f"<p>{html.escape(sweep['status'])}; started {html.escape(sweep['started'])}; spec {html.escape(sweep['spec_path'])}; "
        f"winners by {html.escape(data['objective'])} under {html.escape(constraints)}.</p>",
        "".join(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in data["notes"]),
        "<h2>Winners and verdicts</h2>", _table(COLUMNS, [[w[c] for c in COLUMNS] for w in data["winners"]]),
        f"<h2>Excluded and rejected</h2><p>Rule: {html.escape(data['rule'])}.</p>",
        _table(EXCLUDED_COLUMNS, [[x[c] for c in EXCLUDED_COLUMNS] for x in data["excluded"]]),
        f"<h2>Noise</h2><p>{data['noise']['noisy']} of {data['noise']['benchmarks']} benchmarks are noisy (a coefficient of "
        f"variation above 5%, or stability windows that never agreed: {data['noise']['unconverged']}).</p>",
        _table(["engine", "target", "batch", "cv", "converged"],
               [[n["engine"], n["target"], n["batch"], n["cv"], n["converged"]] for n in data["noise"]["list"]]),
        "<h2>Failures</h2>", _table(["stage", "job", "error"], [[f["stage"], f["job"], f["error"]] for f in data["failures"]]),
        "<h2>Built, not timed</h2>", _table(["model", "target", "engine", "MB"],
                                            [[u["model"], u["target"], u["label"], (u["engine_bytes"] or 0) / 1e6] for u in data["built_not_timed"]]),
        "<h2>Environment</h2>", _table(["target", "kind", "backends", "CPU"], environment),
        f"<p>Metrics as farm.results.metrics defines them: {html.escape(', '.join(m.header for m in METRICS.values()))}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)

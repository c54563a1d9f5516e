"""`farm report` on a seeded store (real SQLite through farm.store, tests/seed.py): one self-contained HTML file
with every section, inline SVG charts, escaped names and numbers as the CLI prints them; csv and json with the
same builds. The end-to-end sweep's report is in tests/test_sweep.py."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from farm.cli import app
from farm.results.metrics import BUILD_METRICS, METRICS
from farm.results.report import SECTIONS
from farm.results.select import Candidate, Constraints, answers, candidates
from farm.store import open_store, schema
from tests.seed import H200, TRT_O3, TRT_O5, Seeded, seed

HOSTILE = "<img src=x onerror=alert(1)>\"&'"
SECTION_TITLES = ["Winners and verdicts", "Charts", *(s.title for s in SECTIONS[1:])]


VOID = ("meta", "br")  # HTML elements without an end tag


@dataclass
class Page(HTMLParser):
    """What a browser would build from the file: every start tag with its attributes, each table's rows of cell
    texts, the h2 titles and each inline svg's class, title, line series and front; every element must be closed
    by its own end tag."""

    tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    h2: list[str] = field(default_factory=list)
    tables: list[list[list[str]]] = field(default_factory=list)  # rows of cells, the header row first
    svgs: list[dict[str, Any]] = field(default_factory=list)
    open: list[str] = field(default_factory=list)
    text: str = ""

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_startendtag(tag, attrs)
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
        elif tag == "svg":
            self.svgs.append({"class": found.get("class"), "title": found.get("aria-label"), "series": [], "front": 0})
        elif tag == "polyline" and found.get("class") == "series":
            self.svgs[-1]["series"].append((found["points"] or "").split())
        elif tag == "polyline" and found.get("class") == "front":
            self.svgs[-1]["front"] = len((found["points"] or "").split())

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text += data
        if self.open and self.open[-1] in ("td", "th"):
            self.tables[-1][-1][-1] += data
        elif self.open and self.open[-1] == "h2":
            self.h2.append(data)


def parse(page: str) -> Page:
    parsed = Page()
    parsed.feed(page)
    parsed.close()
    assert parsed.open == [], parsed.open
    return parsed


def table_after(page: Page, header: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of the table whose header row starts with `header`, as dicts."""
    found = [t for t in page.tables if tuple(t[0][: len(header)]) == header]
    assert len(found) == 1, header
    return [dict(zip(found[0][0], row, strict=True)) for row in found[0][1:]]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("report") / "farm-data")


def report(seeded: Seeded, sweep: int, fmt: str, out: Path) -> str:
    """The file as `farm report` writes it."""
    path = out / f"r{sweep}.{fmt}"
    done = CliRunner().invoke(app, ["report", str(sweep), "--format", fmt, "--out", str(path), "--data-dir", str(seeded.location.data_dir)])
    assert done.exit_code == 0, done.output
    return path.read_text()


def sweep_candidates(seeded: Seeded, sweep: int) -> list[Candidate]:
    store = open_store(seeded.location)
    try:
        with store.session() as s:
            return candidates(s, sweep_id=sweep)
    finally:
        store.close()


def test_the_html_is_one_self_contained_file_with_every_section(seeded: Seeded, tmp_path: Path) -> None:
    text = report(seeded, seeded.sweeps["fleet"], "html", tmp_path)
    page = parse(text)
    assert page.h2 == SECTION_TITLES
    # nothing to fetch: no script, stylesheet link, font, image or any address at all
    assert not [t for t, attrs in page.tags if t in ("script", "link", "img", "iframe", "object") or "src" in attrs]
    anchors = [attrs["href"] for t, attrs in page.tags if "href" in attrs]
    assert anchors and all((a or "").startswith("#") for a in anchors)  # the contents: links within the file
    assert not re.search(r"https?://|@import|url\(", text)
    # no empty table: every table has a header row and at least one row; a section with nothing says so in a sentence
    assert page.tables and all(len(t) >= 2 for t in page.tables)
    assert "Every build was timed where it was built." in page.text  # the seeded fleet times every build it made
    assert "TensorRT-RTX build failed: no implementation for" in page.text  # the failure with its one line
    [failure] = table_after(page, ("stage", "job", "error"))
    assert failure["error"].startswith("TensorRT-RTX build failed") and "\n" not in failure["error"]


def test_every_build_is_listed_with_its_short_key_status_numbers_and_fidelity(seeded: Seeded, tmp_path: Path) -> None:
    fleet = seeded.sweeps["fleet"]
    page = parse(report(seeded, fleet, "html", tmp_path))
    builds = table_after(page, ("build", "model", "target", "batch", "engine", "status"))
    found = sweep_candidates(seeded, fleet)
    assert {(r["build"], int(r["batch"])) for r in builds if r["batch"] != "-"} == {(c.build_key[:8], c.batch_size) for c in found}
    # int8 builds are there, excluded by the rule, with their agreement
    int8 = [r for r in builds if " int8 " in r["engine"]]
    assert int8 and {r["answer"] for r in int8 if r["status"] == "ok"} == {"excluded"}
    resnet_int8 = next(c for c in found if c.build_key == seeded.key("resnet50", "int8", "tensorrt", TRT_O3, H200) and c.batch_size == 1)
    [row] = [r for r in builds if r["build"] == resnet_int8.build_key[:8] and r["batch"] == "1"]
    # numbers as the CLI prints them (farm.results.metrics Metric.format): the cv as a percentage, no raw float
    shown = [m for m in BUILD_METRICS if METRICS[m].header in row]
    assert shown and [row[METRICS[m].header] for m in shown] == [METRICS[m].format(resnet_int8.value(m)) for m in shown]
    assert row[METRICS["cv"].header].endswith("%") and row[METRICS["top1_agreement"].header] == "0.985"
    # the failed build is a row too, with its status and no numbers
    [failed] = [r for r in builds if r["build"] == seeded.failed_build[:8]]
    assert failed["status"] == "build failed" and failed[METRICS["p50"].header] == "-"


def test_numbers_are_formatted_as_the_cli_formats_them(seeded: Seeded, tmp_path: Path) -> None:
    page = parse(report(seeded, seeded.sweeps["fleet"], "html", tmp_path))
    cells = [cell for t in page.tables for row in t for cell in row]
    assert not [c for c in cells if re.search(r"\d\.\d{5,}", c)]  # no float beyond the CLI's digits (cosine: 4)
    assert not [c for c in cells if c.strip() in ("True", "False", "None", "nan")]
    winners = table_after(page, ("model", "target", "batch", "engine", "build"))
    assert winners and all(re.fullmatch(r"\d+\.\d%", w["cv"]) for w in winners)
    assert all(re.fullmatch(r"\d+\.\d{2}x|-", w["vs torch"]) for w in winners)
    noise = table_after(page, ("model", "build", "engine"))  # the noise, each row naming its model
    assert noise and all(r["model"] in ("resnet50", "mobilenet_v3_large") and r["cv"].endswith("%") for r in noise)


def test_the_charts_are_inline_svg_with_a_line_per_engine_and_a_pareto_front(seeded: Seeded, tmp_path: Path) -> None:
    fleet = seeded.sweeps["fleet"]
    page = parse(report(seeded, fleet, "html", tmp_path))
    found = sweep_candidates(seeded, fleet)
    engines: dict[str, set[str]] = {}
    for c in found:
        engines.setdefault(f"{c.model} @ {c.target}", set()).add(c.build_key)
    curves = {str(s["title"]): s for s in page.svgs if s["class"] == "latency"}
    assert set(curves) == set(engines)
    for title, svg in curves.items():
        series = svg["series"]
        assert len(series) == len(engines[title]), title  # one polyline per engine
        assert all(len(points) == 2 for points in series)  # at batch 1 and 8
    planes = [s for s in page.svgs if s["class"] == "pareto"]
    # one per model and target with two builds or more: mobilenet's int8 failed on rtx, one build is no trade-off
    assert {str(s["title"]).removesuffix(", batch 1") for s in planes} == {k for k, v in engines.items() if len(v) >= 2} != set(engines)
    # the front at batch 1 on the H200: int8 (fastest, least faithful) up to ONNX Runtime fp32; torch is dominated
    front = {str(s["title"]): s["front"] for s in planes}
    assert front["resnet50 @ NVIDIA H200 / sm_90, batch 1"] == 5


def test_names_from_specs_are_escaped(seeded: Seeded, tmp_path: Path) -> None:
    hostile = seed(tmp_path / "farm-data")
    store = open_store(hostile.location)
    try:
        with store.session() as s, s.begin():
            s.execute(update(schema.Model).where(schema.Model.name == "resnet50").values(name=HOSTILE))
            s.execute(update(schema.Sweep).where(schema.Sweep.id == hostile.sweeps["fleet"]).values(name=HOSTILE))
    finally:
        store.close()
    text = report(hostile, hostile.sweeps["fleet"], "html", tmp_path)
    assert HOSTILE not in text and "<img" not in text and html.escape(HOSTILE) in text
    page = parse(text)
    assert not [t for t, _ in page.tags if t == "img"]
    assert HOSTILE in page.text  # shown as text: in the title, the tables, the charts' titles and legends
    assert any(HOSTILE in str(s["title"]) for s in page.svgs)


def _csv_sections(text: str) -> dict[str, list[dict[str, str]]]:
    """The csv's blocks by title: `# title`, then a header row and its rows."""
    sections: dict[str, list[list[str]]] = {"winners": []}
    current = "winners"
    for row in list(csv.reader(io.StringIO(text)))[1:]:
        if row and row[0].startswith("# ") and len(row) == 1:
            current = row[0][2:]
            sections[current] = []
        elif row:
            sections[current].append(row)
    return {k: [dict(zip(v[0], r, strict=True)) for r in v[1:]] if len(v) > 1 else [] for k, v in sections.items()}


def test_csv_and_json_carry_the_same_builds_and_sections(seeded: Seeded, tmp_path: Path) -> None:
    fleet = seeded.sweeps["fleet"]
    data = json.loads(report(seeded, fleet, "json", tmp_path))
    sections = _csv_sections(report(seeded, fleet, "csv", tmp_path))
    key = lambda r: (r["build"], str(r["batch"]) if r["batch"] is not None else "-")  # noqa: E731
    assert [key(r) for r in sections["every build"]] == [key(r) for r in data["builds"]]
    assert len(data["builds"]) == len(set(map(key, data["builds"])))
    assert seeded.failed_build[:8] in {r["build"] for r in data["builds"]}
    assert [(r["model"], r["engine"], r["reason"]) for r in sections["excluded and rejected"]] == [
        (r["model"], r["engine"], r["reason"]) for r in data["excluded"]]
    assert [r["job"] for r in sections["failures"]] == [f["job"] for f in data["failures"]] and data["failures"]
    assert [(r["model"], r["build"]) for r in sections["noise"]] == [(n["model"], n["build"]) for n in data["noise"]["list"]]
    assert [r["target"] for r in sections["environment"]] == [e["target"] for e in data["environment"]]
    assert sections["notes"][0] == {"about": "rule", "note": data["rule"]}
    assert all(e["backends"] for e in data["environment"])  # the versions its builds name
    # the json's numbers are the data; the csv's are the CLI's text of them
    row = data["builds"][0]
    assert sections["every build"][0]["p50 ms"] == METRICS["p50"].format(row["p50 ms"])
    # the chart data travels as series
    assert data["charts"]["latency"] and all(s["points"] for c in data["charts"]["latency"] for s in c["series"])


def test_a_running_sweep_lists_its_pending_builds_and_says_what_is_empty(seeded: Seeded, tmp_path: Path) -> None:
    nightly = seeded.sweeps["nightly"]
    page = parse(report(seeded, nightly, "html", tmp_path))
    builds = table_after(page, ("build", "model", "target", "batch", "engine", "status"))
    assert {r["status"] for r in builds} == {"ok", "pending"}  # rtx builds not made yet: named by their job's label
    assert "No job failed." in page.text
    assert all(len(t) >= 2 for t in page.tables)


def test_a_tie_names_the_other_engine(tmp_path: Path) -> None:
    """Two builds whose benchmark intervals overlap tie; the report's answer names the one it was tied with."""
    tied = seed(tmp_path / "farm-data")
    o3, o5 = (tied.key("resnet50", "fp16", "tensorrt", options, H200) for options in (TRT_O3, TRT_O5))
    store = open_store(tied.location)
    try:
        with store.session() as s, s.begin():
            leader = s.scalars(select(schema.Benchmark).where(schema.Benchmark.build_key == o3, schema.Benchmark.batch_size == 1)).one()
            p50, low, high = leader.latency_p50 or 0.0, leader.latency_p50_low, leader.latency_p50_high or 0.0
            s.execute(update(schema.Benchmark).where(schema.Benchmark.build_key == o5, schema.Benchmark.batch_size == 1).values(
                latency_p50=p50 * 1.001, latency_p50_low=low, latency_p50_high=high * 1.002))
    finally:
        store.close()
    fleet = tied.sweeps["fleet"]
    store = open_store(tied.location)
    try:
        with store.session() as s:
            [group] = [a for a in answers(candidates(s, sweep_id=fleet), "p50", Constraints(0.99))
                       if (a.model, a.target, a.batch_size) == ("resnet50", H200, 1)]
    finally:
        store.close()
    assert group.winner is not None and group.winner.verdict is not None and group.winner.verdict.outcome == "tie"
    other = next(k for k in group.winner.verdict.tied if k != group.winner.build_key)
    data = json.loads(report(tied, fleet, "json", tmp_path))
    [answer] = [w for w in data["winners"] if (w["model"], w["target"], w["batch"]) == ("resnet50", H200, 1)]
    assert answer["verdict"].startswith("tie") and answer["tied with"] == [next(b["engine"] for b in data["builds"] if b["build_key"] == other)]
    page = parse(report(tied, fleet, "html", tmp_path))
    [shown] = [w for w in table_after(page, ("model", "target", "batch", "engine", "build"))
               if (w["model"], w["target"], w["batch"]) == ("resnet50", H200, "1")]
    assert shown["tied with"] == answer["tied with"][0]


def test_the_dashboard_offers_the_same_file(seeded: Seeded, tmp_path: Path) -> None:
    from dashboard import data

    fleet = seeded.sweeps["fleet"]
    offered = data.report((str(seeded.location.data_dir), seeded.location.url), fleet, "html")().decode()
    assert offered == report(seeded, fleet, "html", tmp_path)


@pytest.mark.parametrize(("low", "high"), [(0.018, 0.042), (0.962, 1.0), (0.0, 3.45), (5.28, 13.4), (0.99, 0.99)])
def test_chart_ticks_are_round_cover_the_values_and_read_apart(low: float, high: float) -> None:
    from farm.results.charts import tick_labels, ticks

    found = ticks(low, high)
    assert found[0] <= low and found[-1] >= high and 3 <= len(found) <= 11
    for metric in ("p50", "top1_agreement"):
        labels = tick_labels(found, METRICS[metric].format)
        assert len(set(labels)) == len(labels), labels  # 0.035 and 0.040 never both read 0.04


def test_a_detectors_fidelity_is_its_box_recall(tmp_path: Path) -> None:
    """A detector's builds have box recall where a classifier's have top-1 agreement: the builds table shows the one
    each has (and the chart's fidelity axis is the recall)."""
    detector = seed(tmp_path / "farm-data")
    keys = [k for label, k in detector.builds.items() if label.startswith("resnet50 ")]
    store = open_store(detector.location)
    try:
        with store.session() as s, s.begin():
            s.execute(update(schema.Fidelity).where(schema.Fidelity.build_key.in_(keys)).values(top1_agreement=None, box_recall=0.875))
    finally:
        store.close()
    fleet = detector.sweeps["fleet"]
    page = parse(report(detector, fleet, "html", tmp_path))
    builds = table_after(page, ("build", "model", "target", "batch", "engine", "status"))
    recall, top1 = METRICS["box_recall"].header, METRICS["top1_agreement"].header
    timed = [r for r in builds if r["status"] == "ok"]
    assert {(r[recall], r[top1]) for r in timed if r["model"] == "resnet50"} == {("0.875", "-")}
    assert {r[recall] for r in timed if r["model"] == "mobilenet_v3_large"} == {"-"}
    data = json.loads(report(detector, fleet, "json", tmp_path))
    assert {p["y"] for p in data["charts"]["pareto"] if p["model"] == "resnet50"} == {"box_recall"}

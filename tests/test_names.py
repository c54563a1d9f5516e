"""One name per thing (issue 20): metric subsets and objectives are named once, in farm.results.metrics; a
winner candidate reads its metrics under their metric names, and a detector's recall is called recall; SQL is
built only in the store and farm.results.queries."""

from __future__ import annotations

import ast
import typing

from farm.results import metrics
from farm.results.evidence import Evidence
from farm.results.metrics import METRICS, OBJECTIVES, SUBSETS
from farm.results.select import Candidate, Constraints, answers, pareto_front
from farm.cli.terminal import candidate_json
from tests.conftest import REPO

CHECKED = ("farm", "dashboard", "workers")


def test_every_named_subset_names_defined_metrics_and_objectives_are_ranked() -> None:
    for name, subset in SUBSETS.items():
        assert subset and set(subset) <= set(METRICS), (name, set(subset) - set(METRICS))
        assert len(set(subset)) == len(subset), name
    assert typing.get_args(metrics.Objective) == OBJECTIVES
    assert all(METRICS[m].better is not None for m in OBJECTIVES)


def metric_lists(source: str) -> list[tuple[int, list[str]]]:
    """Literal tuples, lists and sets of two or more strings that are all metric names (a type's Literal[...] aside)."""
    tree = ast.parse(source)
    typed = {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and id(node) not in typed and len(node.elts) >= 2:
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(names) == len(node.elts) and set(names) <= set(METRICS):
                found.append((node.lineno, names))
    return found


def test_metric_subsets_are_written_only_in_farm_results_metrics() -> None:
    found = [f"{path.relative_to(REPO)}:{line}: {names}" for folder in CHECKED for path in sorted((REPO / folder).rglob("*.py"))
             if path != REPO / "farm/results/metrics.py" for line, names in metric_lists(path.read_text())]
    assert found == []
    # the check finds one where it is written
    assert metric_lists('TIMING = ("p50", "p99", "throughput")\nstyle = ("p50", "green")\n') == [(1, ["p50", "p99", "throughput"])]


def _candidate(measured: dict[str, float | None], evidence: Evidence | None = None) -> Candidate:
    timed: dict[str, float | None] = {"p50": 2.0, "p99": 3.0, "throughput": 500.0, "cv": 0.01, "cosine": 0.999}
    return Candidate("k", "k", "m", "int8", "onnxruntime", {}, "cpu", 1, None, timed | measured, evidence=evidence)


def test_a_candidate_reads_each_metric_under_its_metric_name() -> None:
    c = _candidate({"top1_agreement": 0.995})
    for name in ("p50", "p99", "throughput", "cv", "top1_agreement", "cosine"):
        assert getattr(c, name) == c.value(name) is not None, name
    assert c.box_recall is None and c.agreement_metric == "top1_agreement" and c.agreement_share == 0.995


def test_a_detectors_recall_is_called_recall_and_the_floor_still_reads_it() -> None:
    detector = _candidate({"top1_agreement": None, "box_recall": 0.9})
    assert detector.top1_agreement is None and detector.box_recall == 0.9
    assert detector.agreement_metric == "box_recall" and detector.agreement_share == 0.9
    # rows from before evidence: the bare floor reads the recall, as min_top1_agreement always did for detectors
    assert Constraints(0.95).failures(detector) == ["top-1 agreement 0.9 < 0.95"] and Constraints(0.85).failures(detector) == []
    assert detector.agreement == "0.900"
    assert pareto_front([detector]) == [detector]  # placed on the agreement axis by its recall
    # `farm best --json` keeps the key scripts read, and names the recall too
    shown = candidate_json(answers([detector], "p50", Constraints(0.85))[0].winner)  # type: ignore[arg-type]
    assert shown["top1_agreement"] == 0.9 and shown["box_recall"] == 0.9 and shown["p50_ms"] == 2.0 and shown["cosine_mean"] == 0.999


# Names of sqlalchemy a module may use outside the store and the queries: errors and the session's type.
NOT_SQL = ("sqlalchemy.exc", "sqlalchemy.orm")
SQL_PLACES = ("farm/store/", "farm/results/queries.py", "farm/results/progress.py", "farm/results/rows.py", "farm/results/history.py")  # history: diff's read side


def sql_imports(source: str) -> list[str]:
    """What a module imports from sqlalchemy to build SQL with, at any depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "sqlalchemy" and not a.name.startswith(NOT_SQL)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy" and not node.level:
            if not (node.module or "").startswith(NOT_SQL):
                found += [f"{node.module}.{a.name}" for a in node.names]
    return found


def test_sql_is_built_only_in_the_store_and_the_read_side_queries() -> None:
    found = [f"{relative}: {names}" for folder in CHECKED for path in sorted((REPO / folder).rglob("*.py"))
             if not (relative := path.relative_to(REPO).as_posix()).startswith(SQL_PLACES)
             and (names := sql_imports(path.read_text()))]
    assert found == []
    assert sql_imports("from sqlalchemy.orm import Session\nfrom sqlalchemy.exc import DBAPIError\n") == []
    assert sql_imports("def f():\n    from sqlalchemy import select, func\n") == ["sqlalchemy.select", "sqlalchemy.func"]
    assert sql_imports("import sqlalchemy as sa\n") == ["sqlalchemy"]


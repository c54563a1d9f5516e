"""Answers that fit a terminal (issue 21, must-haves 3 and 4): winners tables within COLUMNS, engine labels that
print only what tells builds apart, short build keys that `farm pull` takes back, and ties and runners-up named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from farm.cli import app
from farm.cli.common import MIN_WIDTH, terminal_width
from farm.cli.terminal import option_defaults, table_labels
from farm.results.evidence import Evidence
from farm.results.labels import SHORT_KEY, EngineLabels
from farm.results.metrics import METRICS
from farm.results.select import Candidate, Retimed, winners
from farm.store import open_store, schema
from tests.seed import H200, TRT_O3, TRT_O5, Seeded, seed

runner = CliRunner()


@pytest.fixture()
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "farm-data")


def farm(seeded: Seeded, *args: str, columns: int = 200) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--data-dir", str(seeded.location.data_dir)], env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def table_lines(output: str) -> list[str]:
    """The winners tables: from the title line to the first note under them (two spaces, then a model) or the rule."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Winners by"))
    end = next(i for i, line in enumerate(lines) if i > start and (re.match(r"  \w", line) or line.startswith("rule:")))
    return lines[start:end]


def vocabulary(seeded: Seeded) -> tuple[set[str], set[str]]:
    """Every word an engine label can print (backends, precisions, `option=value`, short keys) and the option names."""
    store = open_store(seeded.location, readonly=True)
    with store.session() as s:
        builds = [(b.key, b.backend, dict(b.options)) for b in s.scalars(select(schema.Build))]
    store.close()
    words = {key[:SHORT_KEY] for key, _, _ in builds} | {backend for _, backend, _ in builds}
    words |= {f"{k}={v}" for _, _, options in builds for k, v in options.items()}
    return words, {k for _, _, options in builds for k in options}


@pytest.mark.parametrize("columns", [100, 120])
def test_the_winners_tables_fit_the_width_without_breaking_a_word(seeded: Seeded, columns: int) -> None:
    code, out, _ = farm(seeded, "best", columns=columns)
    assert code == 0, out
    lines = table_lines(out)
    assert len(lines) > 20
    too_long = [line for line in lines if len(line.rstrip()) > columns]
    assert too_long == []
    words, names = vocabulary(seeded)
    for token in (t for line in lines[1:] for t in line.split()):  # the title line aside
        # a word broken over two lines leaves a head that is a part of a label word, or a tail `l=all`
        assert token in words or not any(w.startswith(token) and len(w) > len(token) > 3 for w in words if "=" in w), token
        assert "=" not in token or token.split("=")[0] in names, token
    # every row names its build by a short key that is a real build's, and shows what sets it apart
    assert sum(1 for line in lines for t in line.split() if t in {k[:SHORT_KEY] for k in seeded.builds.values()}) >= 2 * 17
    assert any("optimization_level=5" in line for line in lines)


def test_labels_drop_shared_and_default_options_and_wide_restores_them(seeded: Seeded) -> None:
    _, narrow, _ = farm(seeded, "best", "--model", "resnet50")
    _, wide, _ = farm(seeded, "best", "--model", "resnet50", "--wide")
    shown, everything = "\n".join(table_lines(narrow)), "\n".join(table_lines(wide))
    for shared in ("workspace_bytes=8589934592", "intra_op_threads=8", "graph_optimization_level=all"):  # on every row of its backend
        assert shared not in shown and shared in everything, shared
    assert "optimization_level=5" in shown and "optimization_level=3" in everything
    # optimization_level 3 is TensorRT's default: the winner's label leaves it out, the runner-up's 5 is printed
    assert "optimization_level=3" not in shown


def test_a_label_prints_an_option_only_where_it_differs_from_the_default() -> None:
    def ort(level: str, threads: int) -> Candidate:
        return Candidate(level, level, "m", "fp32", "onnxruntime", {"intra_op_threads": threads, "graph_optimization_level": level},
                         "cpu", 1, None, {})

    rows = [ort("all", 4), ort("basic", 4)]
    labels = table_labels(rows)
    assert [labels.of(c) for c in rows] == ["onnxruntime fp32", "onnxruntime fp32 graph_optimization_level=basic"]
    assert option_defaults()["onnxruntime"]["graph_optimization_level"] == "all"
    assert table_labels(rows, wide=True).of(rows[1]) == rows[1].engine == \
        "onnxruntime fp32 intra_op_threads=4 graph_optimization_level=basic"
    # options of another backend never make one differ: a single torch row next to them prints none
    torch = Candidate("t", "t", "m", "fp32", "torch", {"kind": "eager", "channels_last": True}, "cpu", 1, None, {})
    assert EngineLabels.among([*rows, torch]).of(torch) == "torch fp32"


@pytest.mark.parametrize("environ", [{"COLUMNS": "120"}, {"COLUMNS": "60"}])
def test_columns_sets_the_width_never_below_the_minimum(environ: dict[str, str]) -> None:
    assert terminal_width(environ) == max(int(environ["COLUMNS"]), MIN_WIDTH)


def test_status_fits_100_columns(seeded: Seeded) -> None:
    code, out, _ = farm(seeded, "status", str(seeded.sweeps["fleet"]), columns=100)
    assert code == 0 and "interrupted" in out
    assert all(len(line.rstrip()) <= 100 for line in out.splitlines() if not line.startswith(("failed", "rejected", "running")))


def test_pull_takes_a_short_key_and_refuses_an_ambiguous_one(seeded: Seeded, tmp_path: Path) -> None:
    _, out, _ = farm(seeded, "best", "--model", "resnet50", "--target", "H200", "--json")
    winner = json.loads(out)["winners"][0]
    assert winner["build_key"].startswith(winner["short_key"]) and len(winner["short_key"]) == SHORT_KEY
    code, out, err = farm(seeded, "pull", winner["short_key"], "--out", str(tmp_path / "by-key"))
    assert code == 0, err
    assert json.loads((tmp_path / "by-key" / "manifest.json").read_text())["build_key"] == winner["build_key"]

    shared = seeded.ambiguous_prefix()
    assert shared, "the seeded keys share a first character"
    code, _, err = farm(seeded, "pull", shared, "--out", str(tmp_path / "ambiguous"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "ambiguous" in err and sum(k[:SHORT_KEY] in err for k in seeded.builds.values() if k.startswith(shared)) >= 2
    assert not (tmp_path / "ambiguous").exists()


def tie_at_batch_1(seeded: Seeded) -> tuple[str, str]:
    """Make resnet50's TensorRT fp16 builds on the H200 time alike at batch 1: a tie. Returns (level 3's key, level 5's)."""
    o3, o5 = (seeded.key("resnet50", "fp16", "tensorrt", options, H200) for options in (TRT_O3, TRT_O5))
    columns = [METRICS[m].column for m in ("p50", "p50_low", "p50_high")]
    store = open_store(seeded.location)
    with store.session() as s, s.begin():
        first = s.scalars(select(schema.Benchmark).where(schema.Benchmark.build_key == o3, schema.Benchmark.batch_size == 1)).one()
        s.execute(update(schema.Benchmark).where(schema.Benchmark.build_key == o5, schema.Benchmark.batch_size == 1)
                  .values({c: getattr(first, c) for c in columns}))
    store.close()
    return o3, o5


def test_a_tie_names_the_other_engine_in_the_table_and_the_json(seeded: Seeded) -> None:
    o3, o5 = tie_at_batch_1(seeded)
    _, out, _ = farm(seeded, "best", "--model", "resnet50", "--target", "H200", "--json")
    found = {w["batch_size"]: w for w in json.loads(out)["winners"]}
    tie, win = found[1], found[8]
    assert tie["verdict"]["outcome"] == "tie"
    other = ({o3, o5} - {tie["build_key"]}).pop()
    assert [t["build_key"] for t in tie["tied_with"]] == [other] and tie["runner_up_key"] == other and tie["runner_up"]
    assert tie["tied_with"][0]["short_key"] == other[:SHORT_KEY]
    # a clear win names its runner-up, and lists no tie
    assert win["verdict"]["outcome"] == "winner" and win["runner_up_key"] == o5 and win["tied_with"] == []

    _, table, _ = farm(seeded, "best", "--model", "resnet50", "--target", "H200", columns=120)
    lines = table_lines(table)
    at = next(line.index("verdict") for line in lines if line.rstrip().endswith("verdict"))  # the last column
    text = " ".join(" ".join(line[at:] for line in lines).split())
    assert f"tie of 2 with {other[:SHORT_KEY]} tensorrt fp16" in text
    assert f"over {o5[:SHORT_KEY]} tensorrt fp16 optimization_level=5" in text


def _timed(key: str, precision: str, p50: float) -> Candidate:
    metrics: dict[str, float | None] = {"p50": p50, "p50_low": p50 * 0.99, "p50_high": p50 * 1.01, "top1_agreement": 1.0}
    return Candidate(key, key, "m", precision, "onnxruntime", {}, "cpu", 1, None, metrics,
                     evidence=Evidence("top-1", 64, 64, (), (), 0, None, None, None, None))


def test_a_tie_reordered_by_its_retiming_still_names_the_other_build() -> None:
    """The re-timing puts the benchmarks' runner-up first by a lead too small to count, and the simpler
    build (the benchmarks' leader) is answered: its rival is the one it tied with (it once read `-`)."""
    lead = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02]
    rounds = {"plain": {"median": lead}, "half": {"median": [t * 0.995 for t in lead]}}
    retimed = Retimed("p50", ("plain", "half"), rounds, None)
    found = [Candidate(**{**c.__dict__, "retimed": retimed}) for c in (_timed("plain", "fp32", 1.0), _timed("half", "fp16", 1.001))]
    [answer] = winners(found, "p50", 0.9)
    assert answer.verdict is not None and answer.verdict.outcome == "tie" and answer.build_key == "plain"
    assert [r.build_key for r in answer.tied_with] == ["half"] and answer.runner_up == found[1].engine


def test_a_sweep_refused_before_its_plan_leaves_no_blank_line() -> None:
    """The live bars start with the plan: an error before it (a cluster that refuses us) is the first
    thing on the terminal, not a line after an empty live display's blank one."""
    import io

    from rich.console import Console

    from farm.cli.terminal import SweepProgress

    written = io.StringIO()
    progress = SweepProgress(Console(file=written, force_terminal=True, width=100))
    with pytest.raises(RuntimeError), progress.shown():
        raise RuntimeError("refused before the plan")
    assert written.getvalue() == ""

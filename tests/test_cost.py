"""Cost per inference (issue 24, must-have 4): the price table and its overrides, cost per million
inferences against hand-computed values, CPU targets priced by the cores a benchmark used, `cost` as an
objective, and the cheapest target under a p99 bound, through the CLI on a seeded store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli import app
from farm.results.cheapest import cheapest
from farm.results.prices import Prices, PricesError, cores_used, cost_per_million
from farm.results.select import Candidate, winners, with_costs
from farm.run.spec import SweepSpec
from tests.seed import Seeded, seed

runner = CliRunner()
XEON = "cpu:Intel Xeon (x86_64, amx)"
H100 = "NVIDIA H100 80GB HBM3 / sm_90"
A100 = "NVIDIA A100-SXM4-80GB / sm_80"
PRICES = Prices({"H100": 3.0, "A100": 1.3, "H100 NVL": 3.5}, cpu_core_hour=0.05, origin="test")


def build(key: str, target: str, throughput: float, p99: float, threads: int = 0, batch: int = 1) -> Candidate:
    p50 = 1000.0 * batch / throughput
    metrics: dict[str, float | None] = {"p50": p50, "p50_low": p50 * 0.99, "p50_high": p50 * 1.01, "p99": p99,
                                        "throughput": throughput, "top1_agreement": 1.0}
    return Candidate(key, key, "m", "fp32", "onnxruntime", {"intra_op_threads": threads}, target, batch, None, metrics)


def test_cost_per_million_is_the_hourly_price_over_inferences_an_hour() -> None:
    # 3 USD an hour at 25,000 inferences a second: 90 million inferences an hour, so 3 / 90 USD per million
    assert cost_per_million(3.0, 25_000) == pytest.approx(3.0 / 90.0)
    assert cost_per_million(1.3, 500) == pytest.approx(1.3 / 1.8)  # 1.8 million an hour
    assert cost_per_million(None, 500) is None and cost_per_million(3.0, 0.0) is None


def test_gpu_prices_match_a_word_of_the_name_and_the_longest_wins() -> None:
    assert PRICES.hourly(H100, None) == 3.0
    assert PRICES.hourly("NVIDIA H100 NVL / sm_90", None) == 3.5
    assert PRICES.hourly("NVIDIA RTX A1000 / sm_86", None) is None  # "A100" is not a word of it
    assert PRICES.hourly("NVIDIA L4 / sm_89", None) is None


def test_cpu_targets_are_priced_by_the_cores_the_benchmark_used() -> None:
    assert cores_used({"intra_op_threads": 2}, 16) == 2
    assert cores_used({"intra_op_threads": 0}, 16) == 16  # 0: one thread per physical core
    assert cores_used({}, None) is None
    assert PRICES.hourly(XEON, 4) == pytest.approx(0.2)
    assert PRICES.hourly(XEON, None) is None
    [one, all_cores] = with_costs([build("one", XEON, 100, 12, threads=1), build("all", XEON, 300, 5)], PRICES, {XEON: 8})
    assert one.usd_per_hour == pytest.approx(0.05) and all_cores.usd_per_hour == pytest.approx(0.4)
    assert one.value("cost") == pytest.approx(0.05 / 0.36)  # 360,000 inferences an hour
    assert all_cores.value("cost") == pytest.approx(0.4 / 1.08)


def test_cost_objective_can_choose_fewer_cores_where_throughput_chooses_more() -> None:
    found = with_costs([build("one", XEON, 100, 12, threads=1), build("four", XEON, 200, 6, threads=4)], PRICES, {XEON: 8})
    [fast] = winners(found, "throughput", 0.99)
    [cheap] = winners(found, "cost", 0.99)
    assert fast.build_key == "four" and cheap.build_key == "one"
    assert cheap.verdict is not None and cheap.verdict.outcome == "winner"  # 2x cheaper, cost intervals far apart
    assert "cost intervals apart" in cheap.verdict.note and "USD/M" in cheap.verdict.note


def test_cheapest_target_under_a_p99_bound() -> None:
    found = with_costs([build("h", H100, 1000, 2.0), build("a", A100, 500, 4.0), build("x", XEON, 40, 30.0, threads=2)],
                       PRICES, {XEON: 8})
    # H100: 3 / 3.6 = 0.833 USD/M; A100: 1.3 / 1.8 = 0.722 USD/M; the CPU misses every bound below 30 ms
    [loose] = cheapest(found, 5.0)
    assert [o.target for o in loose.offers][:2] == [A100, H100] and loose.answer is not None and loose.answer.target == A100
    assert loose.offers[-1].candidate is None and "p99 above 5 ms: the lowest is 30.00 ms" in loose.offers[-1].why
    [tight] = cheapest(found, 3.0)
    assert tight.answer is not None and tight.answer.target == H100
    assert tight.answer.cost == pytest.approx(3.0 / 3.6)


def test_price_overrides_replace_entries_and_keep_the_rest() -> None:
    mine = Prices.parse({"gpu": {"H100": 2.0}}, "mine.yaml").over(Prices.default())
    assert mine.gpu_price(H100) == 2.0 and mine.gpu_price("NVIDIA H200 / sm_90") == Prices.default().gpu_price("NVIDIA H200 / sm_90")
    assert mine.cpu_core_hour == Prices.default().cpu_core_hour and "mine.yaml over farm's defaults" in mine.origin
    assert Prices.default().source and Prices.default().date  # the shipped table says where its numbers come from


@pytest.mark.parametrize(("prices", "message"), [
    ({"gpu": {"H100": -1}}, "gpu.H100: expected a price in USD per hour"),
    ({"gpu": ["H100"]}, "gpu: expected a mapping"),
    ({"cpu_core_hours": 0.1}, "unknown field 'cpu_core_hours'"),
])
def test_bad_prices_are_one_line_naming_the_field(tmp_path: Path, prices: dict, message: str) -> None:
    with pytest.raises(PricesError, match=message):
        Prices.parse(prices, "prices")
    with pytest.raises(ValueError, match=message.split(":")[0]):
        SweepSpec.model_validate({"name": "s", "models": [{"name": "m", "source": "torchvision:resnet18"}],
                                  "backends": {"onnxruntime": {}}, "prices": prices})
    path = tmp_path / "prices.yaml"
    path.write_text(json.dumps(prices))
    result = runner.invoke(app, ["cheapest", "--max-p99-ms", "5", "--prices", str(path), "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and str(path) in result.stderr and message in result.stderr


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("cost") / "farm-data")


def farm(seeded: Seeded, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--data-dir", str(seeded.location.data_dir)], env={"COLUMNS": "160"})
    return result.exit_code, result.stdout + result.stderr


def test_best_prices_every_winner_and_ranks_by_cost(seeded: Seeded, tmp_path: Path) -> None:
    code, out = farm(seeded, "best", "--objective", "cost", "--json")
    assert code == 0, out
    winners_json = json.loads(out)["winners"]
    default = Prices.default()
    priced = [w for w in winners_json if w["cost_per_million"] is not None]
    assert priced and any(w["target"].startswith("NVIDIA H200") for w in priced)
    for w in priced:
        if not w["target"].startswith("cpu:"):
            assert w["cost_per_million"] == pytest.approx(cost_per_million(default.gpu_price(w["target"]), w["throughput"]))
    unpriced = {w["target"] for w in winners_json if w["cost_per_million"] is None}
    assert all(default.hourly(t, 8) is None for t in unpriced if not t.startswith("cpu:"))  # only targets the table lacks
    # a prices file names the L4 the defaults lack: its winners get a cost
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpu: {L4: 0.8}\n")
    code, out = farm(seeded, "best", "--objective", "cost", "--json", "--prices", str(prices))
    l4 = [w for w in json.loads(out)["winners"] if "L4" in w["target"]]
    assert code == 0 and l4 and all(w["cost_per_million"] == pytest.approx(cost_per_million(0.8, w["throughput"])) for w in l4)
    code, out = farm(seeded, "best", "--objective", "cost")
    assert code == 0 and "Winners by cost" in out and "USD/M" in out


def test_cheapest_command_answers_per_model_and_says_why_a_target_has_none(seeded: Seeded) -> None:
    code, out = farm(seeded, "cheapest", "--max-p99-ms", "5", "--json")
    assert code == 0, out
    models = json.loads(out)["models"]
    assert models and all(m["answer"] for m in models)
    for m in models:
        offered = [t for t in m["targets"] if t["build"] is not None]
        assert m["answer"] == offered[0]["target"]
        assert [t["cost_per_million"] for t in offered] == sorted(t["cost_per_million"] for t in offered)
        assert all(t["build"]["p99_ms"] <= 5 for t in offered)
        assert all(t["why"] for t in m["targets"] if t["build"] is None)
    code, out = farm(seeded, "cheapest", "--max-p99-ms", "5")
    assert code == 0 and "cheapest" in out and "USD/M" in out
    code, out = farm(seeded, "cheapest", "--max-p99-ms", "0.001")
    assert code == 3 and "p99 above 0.001 ms" in out


def test_dashboard_winners_rank_by_cost_and_answer_the_cheapest_target(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_dashboard import app_on, open_page

    at = open_page(app_on(seeded, monkeypatch), "winners")
    at.radio(key="objective").set_value("cost").run()
    assert not at.exception, [e.value for e in at.exception]
    numbers = next(d.value for d in at.dataframe if "USD/M" in d.value.columns and "key" in d.value.columns)
    h200 = numbers[numbers["target"].str.startswith("NVIDIA H200")]
    assert len(h200) and h200["USD/M"].notna().all()
    offers = next(d.value for d in at.dataframe if "answer" in d.value.columns)
    answered = offers[offers["answer"] == "cheapest"]
    assert set(answered["model"]) == set(offers["model"])  # every model has a cheapest target under the default bound
    for model, rows in offers.groupby("model", sort=False):
        priced = rows["USD/M"].dropna().tolist()
        assert priced == sorted(priced) and rows.iloc[0]["answer"] == "cheapest", model
    at.number_input(key="p99_bound").set_value(0.001).run()
    offers = next(d.value for d in at.dataframe if "answer" in d.value.columns)
    assert (offers["answer"] == "").all() and offers["engine"].str.contains("p99 above 0.001 ms").any()


def test_the_report_prices_its_winners(seeded: Seeded, tmp_path: Path) -> None:
    import csv

    out = tmp_path / "report.csv"
    code, text = farm(seeded, "report", str(seeded.sweeps["nightly"]), "--format", "csv", "--out", str(out))
    assert code == 0, text
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(lines[: lines.index("")] if "" in lines else lines))  # the winners, the first table
    priced = [r for r in rows if r.get("USD/M") not in (None, "", "-")]
    assert priced, rows[:2]
    for r in priced:
        throughput, cost = float(r["samples/s"]), float(r["USD/M"])
        assert cost == pytest.approx(cost_per_million(Prices.default().hourly(r["target"], None) or 0, throughput), rel=1e-3) \
            or r["target"].startswith("cpu:")

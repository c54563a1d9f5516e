"""Accuracy verdicts with evidence (docs/verdicts.md section 5): Wilson intervals and McNemar against
published values, confident flips and fp32's noise floor deciding eligibility, degenerate references
named, and rejected variants kept as findings that a sweep answers with (exit 0) and never retries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from farm.cli.commands import app, sweep_exit_code
from farm.run.driver import run_sweep
from farm.results.evidence import Evidence, NoiseFloor
from farm.results.select import Candidate, Constraints, answers
from farm.run.spec import load_spec
from workers.stats import mcnemar, paired, wilson
from farm.store import StoreLocation, open_store, schema
from tests import digits_model
from tests.conftest import CALIBRATION_DATA, write_spec
from workers import fidelity


# --- the statistics --------------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score without continuity correction)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    # the numbers: 7/12 and 9/12 of a 12-photo judge set
    (7, 12, 0.32, 0.81), (9, 12, 0.47, 0.91),
])
def test_wilson_intervals_match_published_values(k: int, n: int, low: float, high: float) -> None:
    places = 4 if n > 12 else 2
    assert tuple(round(v, places) for v in wilson(k, n)) == (low, high)


def test_wilson_knows_nothing_from_no_samples_and_rejects_impossible_counts() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(16, 16)[1] == 1.0 and wilson(16, 16)[0] < 1.0
    with pytest.raises(ValueError, match="17 successes in 16"):
        wilson(17, 16)


def test_mcnemar_matches_the_published_exact_and_mid_p_values() -> None:
    # Fagerland, Lydersen and Laake (2013), BMC Med Res Methodol 13:91: discordant pairs 1 and 7 give
    # exact conditional p = 0.070 and mid-p = 0.039.
    test = mcnemar(1, 7)
    assert round(test.p_exact, 3) == 0.070 and round(test.p_mid, 3) == 0.039
    assert mcnemar(7, 1) == mcnemar(7, 1) and mcnemar(7, 1).p_exact == test.p_exact  # two-sided
    assert mcnemar(3, 3).p_exact == 1.0 and mcnemar(3, 3).p_mid == 1.0 and mcnemar(0, 0).p_exact == 1.0
    # from the images each candidate got wrong: image 2 only the second, 5 and 6 only the first
    assert paired([5, 6, 9], [2, 9], 10) == mcnemar(1, 2)
    with pytest.raises(ValueError, match="outside 0..9"):
        paired([10], [], 10)


# --- what a fidelity row holds --------------------------------------------------------------------

def test_compare_records_which_images_flipped_with_the_references_margin() -> None:
    reference = np.array([[5.0, 0.0, 0.0], [0.10, 0.0, 0.05], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    candidate = np.array([[0.0, 5.0, 0.0], [0.0, 0.10, 0.05], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    found = fidelity.compare(reference, candidate)
    assert (found.agreed, found.samples, found.flipped) == (2, 4, (0, 1))
    assert found.reference_margins[0] > 0.9 and found.reference_margins[1] < 0.05  # sure on image 0, torn on image 1
    assert found.kl_mean > 0 and fidelity.compare(reference, reference).kl_mean == pytest.approx(0.0, abs=1e-12)
    assert found.reference_note is None
    broken = fidelity.compare(reference, np.where(np.arange(3) == 0, np.nan, candidate))
    assert broken.nonfinite == 4 and broken.agreed == 0 and broken.kl_mean == float("inf")


def test_a_reference_half_precision_cannot_resolve_is_named_degenerate() -> None:
    rng = np.random.default_rng(0)
    tiny = rng.normal(size=(4, 10)) * 3e-14  # random-weight efficientnet_b0's logits
    assert fidelity.degenerate(tiny) is not None and fidelity.degenerate(tiny).startswith(fidelity.DEGENERATE)
    assert "below what fp16/bf16 can resolve" in fidelity.degenerate(tiny)
    flat = 1000.0 + rng.normal(size=(4, 10)) * 1e-4  # large logits a thousandth apart: fp16 rounds them together
    assert fidelity.degenerate(flat) is not None
    constant = np.tile(rng.normal(size=(1, 10)), (4, 1))  # a network that ignores its input
    assert "same for all 4 images" in fidelity.degenerate(constant)
    assert "NaN or inf on 1 of 4" in fidelity.degenerate(np.where(np.arange(4)[:, None] == 2, np.inf, rng.normal(size=(4, 10))))
    assert fidelity.degenerate(rng.normal(size=(4, 10))) is None
    assert fidelity.compare(tiny, np.zeros_like(tiny)).reference_note is not None


def test_the_noise_floor_perturbation_moves_images_and_leaves_other_inputs_alone() -> None:
    images = np.arange(2 * 3 * 4 * 64, dtype=np.float32).reshape(2, 3, 4, 64)
    moved = fidelity.shifted(images)
    assert moved is not None and moved.shape == images.shape
    assert (moved[..., 2:] == images[..., :-2]).all() and (moved[..., :2] == images[..., :1]).all()
    assert fidelity.shifted(np.zeros((2, 1, 8, 8), np.float32)) is None  # 2 px of an 8-px digit is no harmless change
    assert fidelity.shifted(np.zeros((2, 10), np.float32)) is None


# --- eligibility from evidence --------------------------------------------------------------------

def _candidate(key: str, evidence: Evidence | None, p50: float = 1.0, top1: float | None = None, nonfinite: int = 0,
               precision: str = "int8") -> Candidate:
    share = top1 if top1 is not None else (evidence.agreed / evidence.samples if evidence else None)
    metrics: dict[str, float | None] = {"p50": p50, "p50_low": p50 * 0.99, "p50_high": p50 * 1.01, "top1_agreement": share,
                                        "cosine": 0.99, "nonfinite": nonfinite}
    return Candidate(key, key, "m", precision, "onnxruntime", {}, "cpu", 1, None, metrics, evidence=evidence)


MARGINS = tuple([0.9] * 8 + [0.01] * 8)  # fp32 is sure of images 0-7 and torn on 8-15


def test_a_flip_where_fp32_was_sure_excludes_and_flips_it_could_not_decide_do_not() -> None:
    sure = Evidence("top-1", 16, 15, (3,), MARGINS)
    torn = Evidence("top-1", 16, 15, (12,), MARGINS)
    rule = Constraints(0.98)
    assert rule.failures(_candidate("sure", sure)) == ["1 confident flip (fp32 margin >= 0.1)"]
    assert rule.failures(_candidate("torn", torn)) == []  # 15/16: Wilson upper bound 0.989 reaches 0.98
    assert Constraints(0.98, confident_margin=0.95).failures(_candidate("sure", sure)) == []  # a stricter notion of "sure"
    # the bare threshold of the old rule, still available
    assert Constraints(0.98, rule="threshold").failures(_candidate("torn", torn)) == [
        "top-1 agreement 0.9375 < 0.98 (top-1 15/16 [0.72, 0.99], 0 confident flips)"]


def test_disagreement_within_fp32s_own_noise_floor_is_not_called_worse_than_fp32() -> None:
    torn = (8, 9, 10, 11)
    noise = NoiseFloor("2-pixel shift", 16, 11, (8, 9, 10, 12, 13))  # fp32 itself changes its mind on 5 images
    inside = Evidence("top-1", 16, 12, torn, MARGINS, noise=noise)
    outside = Evidence("top-1", 16, 12, torn, MARGINS, noise=NoiseFloor("2-pixel shift", 16, 15, (9,)))
    assert Constraints(0.99).failures(_candidate("inside", inside)) == []
    missed = Constraints(0.99).failures(_candidate("outside", outside))
    assert len(missed) == 1 and "top-1 12/16 [0.51, 0.90]: upper bound below 0.99" in missed[0] and "15/16" in missed[0]
    # a confident flip that fp32 makes too under the shift is excused; one it does not make is not
    excused = Evidence("top-1", 16, 15, (2,), MARGINS, noise=NoiseFloor("2-pixel shift", 16, 15, (2,)))
    assert Constraints(0.9).failures(_candidate("excused", excused)) == []
    assert Evidence("top-1", 16, 14, (2, 3), MARGINS, noise=excused.noise).blamed_flips() == [3]


def test_nan_is_never_eligible_and_a_degenerate_reference_judges_only_finiteness() -> None:
    nan = Evidence("top-1", 16, 0, tuple(range(16)), MARGINS, nonfinite=16)
    for rule in ("evidence", "threshold"):
        assert Constraints(0.0, rule=rule).failures(_candidate("nan", nan)) == ["NaN or inf outputs on 16 of 16 images"]  # type: ignore[arg-type]
    # rows recorded before evidence: the nonfinite count alone still excludes
    assert Constraints(0.0).failures(_candidate("old", None, top1=1.0, nonfinite=2)) == ["NaN or inf outputs on 2 images"]
    note = "reference degenerate: fidelity not meaningful (...)"
    zeros = _candidate("fp16", Evidence("top-1", 16, 0, tuple(range(16)), MARGINS, reference_note=note), p50=0.5, precision="fp16")
    fp32 = _candidate("fp32", Evidence("top-1", 16, 16, (), MARGINS, reference_note=note), p50=1.0, precision="fp32")
    group = answers([zeros, fp32], "p50", Constraints(0.99, min_cosine=0.999))
    assert group[0].winner is not None and group[0].winner.build_key == "fp16"  # a speed result: the faster finite build
    assert group[0].speed_only == note and group[0].winner.agreement == "speed only"


def test_every_group_lists_what_it_excluded_with_a_paired_test_against_the_winner() -> None:
    winner = _candidate("fp32", Evidence("top-1", 16, 16, (), MARGINS), p50=2.0, precision="fp32")
    fast = _candidate("int8", Evidence("top-1", 16, 13, (1, 2, 3), MARGINS), p50=1.0)
    group = answers([winner, fast], "p50", Constraints(0.99))
    assert group[0].winner is not None and group[0].winner.build_key == "fp32"
    (excluded,) = group[0].excluded
    assert excluded.line().startswith("excluded: onnxruntime int8  top-1 13/16 [0.57, 0.93], 3 confident flips: 3 confident flips")
    assert excluded.versus_winner is not None and "McNemar on 3 discordant images" in excluded.versus_winner
    assert "exact p 0.250" in excluded.versus_winner  # 3 against 0: 2 x 0.5^3
    assert excluded.to_json()["evidence"]["flipped"][0] == {"image": 1, "reference_margin": 0.9}
    # an eligible build that beats its runner-up on speed is compared with it on agreement too, image by image
    torn = _candidate("fp16", Evidence("top-1", 16, 15, (12,), MARGINS), p50=1.5, precision="fp16")
    (answer,) = answers([winner, torn], "p50", Constraints(0.9))
    assert answer.winner is not None and answer.winner.build_key == "fp16" and not answer.excluded
    assert answer.versus_runner_up is not None and "(winner only 0, runner-up only 1)" in answer.versus_runner_up


# --- through sweeps ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_degenerate_reference_is_named_in_every_fidelity_row_and_answer(ray_cluster: None, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, f"""
        name: degenerate
        models:
          - {{name: tiny_logits, source: "tests.models:degenerate_logits", weights: null, input_shape: [3, 64, 64]}}
        precisions: [fp32, fp16]
        batch_sizes: [1]
        backends: {{onnxruntime: {{}}}}
        calibration: {{data: {CALIBRATION_DATA}, samples: 4}}
        fidelity: {{samples: 4}}
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        selection: {{retime: {{enabled: false}}}}
        limits: {{isolate_builds: false}}
    """)
    spec, base = load_spec(spec_path)
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    result = run_sweep(spec, base, str(spec_path), store)
    assert sweep_exit_code(result.states) == 0
    with store.session() as s:
        rows = s.scalars(select(schema.Fidelity)).all()
        assert len(rows) == 2 and all(r.reference_note and r.reference_note.startswith(fidelity.DEGENERATE) for r in rows)
        reference = s.scalars(select(schema.Reference)).one()
        assert reference.note.startswith(fidelity.DEGENERATE)
        assert reference.noise_floor["samples"] == 4 and reference.noise_floor["perturbation"] == "2-pixel shift"
    shown = CliRunner().invoke(app, ["best", "--json", "--data-dir", str(tmp_path / "data")])
    assert shown.exit_code == 0, shown.output
    (winner,) = json.loads(shown.stdout)["winners"]
    assert winner["speed_only"] and fidelity.DEGENERATE in winner["note"]
    assert winner["evidence"]["reference_note"].startswith(fidelity.DEGENERATE)
    floor = winner["evidence"]["noise_floor"]  # fp32 against itself on the shifted images, per model
    assert floor["samples"] == 4 and floor["perturbation"] == "2-pixel shift" and floor["text"].startswith("fp32 under a 2-pixel shift")
    table = CliRunner().invoke(app, ["best", "--data-dir", str(tmp_path / "data")])
    assert table.exit_code == 0 and "tiny_logits: noise floor: fp32 under a 2-pixel shift" in " ".join(table.output.split())
    assert f"tiny_logits: {fidelity.DEGENERATE}" in " ".join(table.output.split())


@pytest.mark.slow
def test_a_variant_the_fallback_rejects_is_a_finding_answered_with_exit_0_and_not_retried(ray_cluster: None, tmp_path: Path) -> None:
    paths = digits_model.save_digits_arrays(tmp_path / "digits")
    # Rescuing this network's int8 needs 43-50% of its activations in float (tests/test_fallback.py): over 0.25, refused.
    spec_path = write_spec(tmp_path, f"""
        name: rejected
        models:
          - {{name: digits, source: "tests.digits_model:outlier_digits_cnn", weights: null, input_shape: [1, 8, 8]}}
        precisions: [fp32, int8]
        batch_sizes: [1]
        backends: {{onnxruntime: {{}}}}
        calibration: {{data: {paths['calibration']}, samples: 64, methods: minmax}}
        fidelity: {{data: {paths['holdout']}, samples: 100, fallback: {{max_tries: 6, max_float_fraction: 0.25}}}}
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        selection: {{retime: {{enabled: false}}}}
        limits: {{isolate_builds: false}}
    """)
    spec, base = load_spec(spec_path)
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    first = run_sweep(spec, base, str(spec_path), store)
    assert first.rejected == 1 and first.failed == 0 and sweep_exit_code(first.states) == 0
    assert sorted(first.states.values()).count("skipped") == 3  # the int8 build, its benchmark and fidelity: nothing to do
    with store.session() as s:
        variant = s.scalars(select(schema.Variant).where(schema.Variant.precision == "int8")).one()
        assert variant.status == "rejected" and "not viable" in variant.error
        variant_label = s.scalars(select(schema.SweepJob.label).where(schema.SweepJob.key == variant.key)).first()
        assert variant.details["fallback"]["refused"] and variant.details["fallback"]["plain"]["samples"] == 100
        judged_at = variant.created_at
    shown = CliRunner().invoke(app, ["best", "--json", "--data-dir", str(tmp_path / "data")])
    assert shown.exit_code == 0, shown.output
    answer = json.loads(shown.stdout)
    (winner,) = answer["winners"]
    assert winner["precision"] == "fp32" and answer["rule"].startswith("eligible when no confident flip")
    (excluded,) = [x for x in winner["excluded"] if x["stage"] == "variant"]
    numbers = excluded["evidence"]
    assert excluded["engine"].startswith("int8 minmax") and "not viable" in excluded["reasons"][0]
    assert numbers["samples"] == 100 and numbers["agreed"] < 100 and numbers["interval"][1] < 1.0
    assert numbers["flips"] == 100 - numbers["agreed"] and all(f["reference_margin"] is not None for f in numbers["flipped"])
    assert f"top-1 {numbers['agreed']}/100 [" in excluded["line"]
    # Run again: the rejection is read back with its key, not judged again, and the sweep still exits 0.
    again = run_sweep(spec, base, str(spec_path), store)
    assert again.rejected == 1 and sweep_exit_code(again.states) == 0
    assert not any(state == "done" for state in again.states.values())
    with store.session() as s:
        assert s.scalars(select(schema.Variant).where(schema.Variant.precision == "int8")).one().created_at == judged_at
    # a re-run the store answered whole adds no sweep: it is counted on the sweep it repeats
    assert again.sweep_id == first.sweep_id and set(again.states.values()) == {"cached", "rejected", "skipped"}
    status = CliRunner().invoke(app, ["status", "--json", "--data-dir", str(tmp_path / "data")])
    shown_status = json.loads(status.stdout)
    assert shown_status["failures"] == [] and [r["job"] for r in shown_status["rejected"]] == [variant_label]
    assert shown_status["stages"]["variant"]["rejected"] == 1 and shown_status["stages"]["build"]["skipped"] == 1
    for format in ("json", "csv", "html"):  # the report a person mails lists it too, with its numbers
        out = tmp_path / f"report.{format}"
        made = CliRunner().invoke(app, ["report", str(first.sweep_id), "--format", format, "--out", str(out), "--data-dir", str(tmp_path / "data")])
        assert made.exit_code == 0 and f"top-1 {numbers['agreed']}/100 [" in out.read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert [x["stage"] for x in report["excluded"]] == ["variant"] and report["rejected"][0]["evidence"]["samples"] == 100
    # and `farm pull --precision int8` says by how much it missed
    pulled = CliRunner().invoke(app, ["pull", "digits", "--target", "cpu", "--precision", "int8", "--data-dir", str(tmp_path / "data")])
    assert pulled.exit_code == 3 and f"top-1 {numbers['agreed']}/100 [" in pulled.output and "not viable" in pulled.output


@pytest.mark.slow
def test_the_quickstart_readme_command_exits_0(ray_cluster: None, tmp_path: Path) -> None:
    """The README's first command, reduced to mobilenet_v3_small (whose int8 variant used to fail it) on one
    thread setting and batch size: every job done or judged, exit 0, and whatever the reference cannot judge said so."""
    import yaml

    from tests.conftest import REPO

    spec = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    spec["models"] = [m for m in spec["models"] if m["name"] == "mobilenet_v3_small"]
    spec |= {"precisions": ["fp32", "fp16", "int8"], "batch_sizes": [1], "targets": ["cpu"],
             "backends": {"onnxruntime": {"intra_op_threads": [2], "graph_optimization_level": "all"}},
             "benchmark": {"warmup_s": 0.0, "duration_s": 0.1, "min_iterations": 3, "window_s": 0.05, "max_duration_s": 0.5},
             "selection": {"retime": {"enabled": False}}}
    spec["calibration"]["data"] = str(CALIBRATION_DATA)
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["sweep", str(path), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert " 0 failed" in output
    with open_store(StoreLocation.resolve(tmp_path / "data")).session() as s:
        int8 = s.scalars(select(schema.Variant).where(schema.Variant.precision == "int8")).all()
        assert int8 and all(v.status in ("ok", "rejected") for v in int8)
        assert all("rejected: int8 minmax" in output for v in int8 if v.status == "rejected")
        reference = s.scalars(select(schema.Reference)).one()
        if reference.note:  # random-weight mobilenet_v3_small's logits are about 1e-9: no fidelity means anything
            assert f"mobilenet_v3_small: {reference.note}: a speed result" in output
            assert all(v.details["fallback"]["skipped"].startswith(fidelity.DEGENERATE) for v in int8)

"""The PyTorch engine kinds through the whole farm, on this machine's CPU: eager, torch.compile
(Inductor CPU, with its caches kept per target and handed to the next build) and AOTInductor
packages (g++), in fp32 and bf16, judged against the fp32 reference like every engine."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.run.driver import SweepResult, run_sweep
from farm.results.select import candidates
from farm.run.spec import load_spec
from farm.store import Store, StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, write_spec

pytestmark = pytest.mark.slow
TorchSweep = tuple[Path, Store, SweepResult]

SPEC = f"""
    name: kinds
    models:
      - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
    precisions: [fp32, bf16]
    batch_sizes: [1, 4]
    backends:
      torch:
        - {{kind: eager}}
        - {{kind: compile, batch_sizes: [COMPILE_BATCH]}}
        - {{kind: aoti, batch_sizes: [1, 4]}}
    targets: [cpu]
    fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
    benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
    limits: {{isolate_builds: false}}
"""


@pytest.fixture(scope="module")
def torch_sweep(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> TorchSweep:
    folder = tmp_path_factory.mktemp("kinds")
    spec, base = load_spec(write_spec(folder, SPEC.replace("COMPILE_BATCH", "4")))
    store = open_store(StoreLocation.resolve(folder / "data"))
    return folder, store, run_sweep(spec, base, "kinds", store)


def test_every_kind_builds_times_and_is_judged(torch_sweep: TorchSweep) -> None:
    _folder, store, result = torch_sweep
    assert not result.errors, result.errors
    with store.session() as s:
        builds = s.scalars(select(schema.Build)).all()
        kinds = {(b.options["kind"], b.variant.precision) for b in builds}
        assert kinds == {(k, p) for k in ("eager", "compile", "aoti") for p in ("fp32", "bf16")}
        by_kind = {(b.options["kind"], b.variant.precision): b for b in builds}
        # bf16 is a module cast: no ONNX variant was made for it
        assert by_kind[("eager", "bf16")].variant.onnx_sha256 is None and by_kind[("eager", "bf16")].variant.details == {"form": "module", "precision": "bf16"}
        aoti = by_kind[("aoti", "fp32")]
        package = store.artifacts.get(aoti.engine_sha256)
        assert zipfile.is_zipfile(io.BytesIO(package)) and aoti.manifest["extra"]["package_bytes"] == len(package)
        assert aoti.manifest["extra"]["batch_range"] == [1, 4] and "aoti_load_package" in aoti.manifest["extra"]["how_to_load"]
        compiled = by_kind[("compile", "fp32")].manifest["extra"]
        assert compiled["reproducible"].startswith("in-process only") and set(compiled["compile_seconds"]) == {"4"}
        benches = s.scalars(select(schema.Benchmark)).all()
        assert {(b.build.options["kind"], b.batch_size) for b in benches} == {("eager", 1), ("eager", 4), ("compile", 4), ("aoti", 1), ("aoti", 4)}
        assert all(b.status == "ok" and b.converged is not None and b.latency_p50_low <= b.latency_p50 <= b.latency_p50_high for b in benches)
        fidelity = {(f.build.options["kind"], f.build.variant.precision): f for f in s.scalars(select(schema.Fidelity))}
        assert all(f.cosine_min > 0.9999 for (kind, precision), f in fidelity.items() if precision == "fp32"), fidelity
        assert all(f.cosine_min > 0.99 for f in fidelity.values())  # bf16 keeps 8 bits of mantissa
        found = candidates(s)
        assert {c.engine.split()[0] for c in found} == {"torch"} and any("kind=aoti" in c.engine for c in found)


def test_compile_caches_are_kept_per_target_and_reach_the_next_build(torch_sweep: TorchSweep) -> None:
    folder, store, _first = torch_sweep
    with store.session() as s:
        caches = s.scalars(select(schema.TimingCache)).all()
        assert [c.backend_version.split()[0] for c in caches] == ["inductor"] and caches[0].builds == 2
    # another batch size: a new compile build, which starts from what the first ones left
    spec, base = load_spec(write_spec(folder, SPEC.replace("COMPILE_BATCH", "1"), name="again.yaml"))
    second = run_sweep(spec, base, "kinds", store)
    assert second.count("build", "done") == 2 and not second.errors, second.errors  # the two new compile builds
    with store.session() as s:
        new = [b for b in s.scalars(select(schema.Build)) if b.options["kind"] == "compile" and b.manifest["extra"]["batch_range"] == [1, 1]]
        assert len(new) == 2 and all(b.manifest["extra"]["compile_caches_given"] >= 1 for b in new)

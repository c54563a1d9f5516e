"""Faults injected into a real CPU sweep, one at a time, each followed by a re-run: what the store keeps.

Every fault runs real `python -m farm.cli sweep` processes (a local Ray cluster each) on a real SQLite
store: kill -9 of the driver after N jobs, kill -9 of the Ray worker running an isolated build, SIGINT,
an engine's bytes altered, an artifact file deleted, a full disk (a real tmpfs) while the store is
created, and a disk that fills mid-sweep. After each: the re-run's exit code; results lost (a stage row
that was ok before the fault and is not ok after the re-run, or names other artifacts); rows duplicated
(two rows of one job, or an artifact row nothing references); `farm verify` (run with `--repair` when
the fault needs it, or when the re-run left a problem); SQLite's integrity_check. Prints a table and
writes JSON. The tmpfs faults need root (`mount`); without it they read "injected: no".

    python3 benchmarks/fault_injection.py --out benchmarks/results/cpu/fault_injection.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.store import schema  # noqa: E402
from farm.store.schema import artifact_columns  # noqa: E402
from workers.device import describe  # noqa: E402

# The corpus's tiny CNN on ONNX Runtime, two optimisation levels and two batch sizes: 12 jobs, two engines.
SPEC = """\
    name: faults
    models:
      - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
    backends: {{onnxruntime: {{intra_op_threads: 1, graph_optimization_level: [basic, all]}}}}
    batch_sizes: [1, 2]
    benchmark: {{warmup_s: 0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
    selection: {{retime: {{enabled: false}}}}
    fidelity: {{data: {data}, samples: 2}}
"""
SWEEP_TIMEOUT_S = 300
FINISHED = ("done", "cached")
BUILD_TITLE = "ray::build_task"  # farm.run.stages.base names each stage's Ray task "<stage>_task"

Snapshot = dict[tuple[str, str], tuple[tuple[str | None, ...], str]]  # (stage, key) -> (artifact sha256s, created_at)


@dataclass
class Outcome:
    fault: str
    injected: bool = False
    how: str = ""  # what was done, and what the faulted run said
    first_rc: int | None = None  # the faulted run's exit code (None: killed)
    rerun_rc: int | None = None
    results_before: int = 0
    results_lost: int = 0
    rows_rewritten: int = 0  # ok rows written again by the re-run (a repaired job's, and nothing else)
    rows_duplicated: int = 0
    repaired: bool = False
    ansi_lines: int = 0  # lines with a terminal code in the runs' piped output (Ray's coloured "worker died" lines)
    verify_clean: bool = False
    integrity: str = ""
    notes: list[str] = field(default_factory=list)


# --- processes ----------------------------------------------------------------------------------

def farm(*argv: str, cwd: Path = ROOT, timeout: float = SWEEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", *argv], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})


@contextlib.contextmanager
def driver(spec: Path, data: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `farm sweep` in its own session; on the way out it and every process it started (Ray's) are gone."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        # SIGINT as a terminal leaves it: a shell's background job (this script under nohup) inherits it ignored.
        process = subprocess.Popen([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(data)], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                                   env=os.environ | {"PYTHONPATH": str(ROOT)})
        try:
            yield process
        finally:
            family = _family(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=SWEEP_TIMEOUT_S)
            if process.poll() is None:
                process.kill()
                process.wait()
            _reap(family)


def _family(pid: int) -> list[psutil.Process]:
    """The driver and the processes of its session (Ray's head: raylet, GCS, workers)."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(p.pid) == pid:
                found.append(p)
    return found


def _reap(family: list[psutil.Process], grace_s: float = 30) -> None:
    """Ray's processes end a few seconds after their driver; what is left after `grace_s` is killed."""
    gone, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def finished_jobs(data: Path) -> int:
    db = data / "farm.db"
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            return c.execute(f"SELECT count(*) FROM sweep_jobs WHERE state IN {FINISHED}").fetchone()[0]
    except sqlite3.Error:
        return 0  # not made yet


def wait_for(process: subprocess.Popen[bytes], ready: Callable[[], bool], poll_s: float = 0.05) -> bool:
    """Poll until `ready` or the driver ends on its own (then the fault could not be injected)."""
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(poll_s)
    return False


def build_worker(driver_pid: int) -> psutil.Process | None:
    """The Ray worker running a build (Ray titles it with the task's name), not the child it forked for it."""
    def building(p: psutil.Process | None) -> bool:
        return p is not None and " ".join(p.cmdline()).startswith(BUILD_TITLE)

    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(p.pid) == driver_pid and building(p) and not building(p.parent()):
                return p
    return None


# --- what the store holds -----------------------------------------------------------------------

def _read(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def table_name(table: Any) -> str:
    return str(table.__table__.name)


def snapshot(data: Path) -> Snapshot:
    """Every ok stage row: the artifacts it names and when it was written."""
    found: Snapshot = {}
    if not (data / "farm.db").exists():
        return found
    with contextlib.closing(_read(data / "farm.db")) as c:
        tables = {name for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for stage, table in schema.STAGE_TABLES.items():
            if table_name(table) not in tables:  # a store whose creation was refused holds no table
                continue
            columns = ["key", "created_at", *(col.name for col in artifact_columns(table))]
            for key, created, *shas in c.execute(f"SELECT {', '.join(columns)} FROM \"{table_name(table)}\" WHERE status = 'ok'"):
                found[(stage, key)] = (tuple(shas), str(created))
    return found


def duplicated(data: Path) -> tuple[int, list[str]]:
    """Two rows for one job (a stage table's key, a sweep's job) and artifact rows nothing references."""
    lines: list[str] = []
    with contextlib.closing(_read(data / "farm.db")) as c:
        for table in schema.STAGE_TABLES.values():
            for key, n in c.execute(f"SELECT key, count(*) FROM \"{table_name(table)}\" GROUP BY key HAVING count(*) > 1"):
                lines.append(f"{table_name(table)} {key[:12]}: {n} rows")
        for sweep, stage, key, n in c.execute("SELECT sweep_id, stage, key, count(*) FROM sweep_jobs "
                                              "GROUP BY sweep_id, stage, key HAVING count(*) > 1"):
            lines.append(f"sweep_jobs {sweep} {stage} {key[:12]}: {n} rows")
        used: set[str] = set()
        for table in schema.STAGE_TABLES.values():
            for column in artifact_columns(table):
                used |= {sha for (sha,) in c.execute(f"SELECT {column.name} FROM \"{table_name(table)}\"") if sha}
        for (shas,) in c.execute("SELECT sha256s FROM timing_caches"):
            used |= set(json.loads(shas) if isinstance(shas, str) else shas or [])
        lines += [f"artifact {sha[:12]} ({kind}): no row references it"
                  for sha, kind in c.execute("SELECT sha256, kind FROM artifacts") if sha not in used]
    return len(lines), lines


def integrity(data: Path) -> str:
    with contextlib.closing(_read(data / "farm.db")) as c:
        return " ".join(row[0] for row in c.execute("PRAGMA integrity_check"))


def judge(outcome: Outcome, data: Path, before: Snapshot, repair: bool = False) -> None:
    """After the re-run: verify (and repair what a crash may leave, e.g. an orphan file), then count."""
    checked = farm("verify", "--data-dir", str(data))
    if checked.returncode != 0 and not repair:
        outcome.notes.append("verify after the re-run: " + " | ".join(checked.stdout.splitlines()[:5]))
        repair = True
    if repair and checked.returncode != 0:
        mended = farm("verify", "--repair", "--data-dir", str(data))
        outcome.repaired = True
        outcome.notes.append(f"verify --repair exit {mended.returncode}: " + " | ".join(mended.stdout.splitlines()[:5]))
        checked = farm("verify", "--data-dir", str(data))
    outcome.verify_clean = checked.returncode == 0
    if not outcome.verify_clean:
        outcome.notes.append("verify at the end: " + " | ".join((checked.stdout + checked.stderr).splitlines()[:5]))
    after = snapshot(data)
    outcome.results_before = len(before)
    lost = [job for job, (shas, _) in before.items() if job not in after or after[job][0] != shas]
    outcome.results_lost = len(lost)
    outcome.notes += [f"lost: {stage} {key[:12]}" for stage, key in lost[:5]]
    outcome.rows_rewritten = sum(1 for job, (_, created) in before.items() if job in after and after[job][1] != created)
    outcome.rows_duplicated, lines = duplicated(data)
    outcome.notes += lines[:5]
    outcome.integrity = integrity(data)


def rerun(outcome: Outcome, spec: Path, data: Path) -> None:
    done = farm("sweep", str(spec), "--data-dir", str(data))
    outcome.rerun_rc = done.returncode
    outcome.ansi_lines += coloured(done.stdout + done.stderr)
    if done.returncode != 0:
        outcome.notes.append("re-run: " + " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:]))


def coloured(text: str) -> int:
    return sum("\x1b" in line for line in text.splitlines())


def faulted_run(outcome: Outcome, log: Path) -> str:
    """The last line the faulted run wrote to its pipe; its coloured lines are counted."""
    text = log.read_text(errors="replace")
    outcome.ansi_lines += coloured(text)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --- the faults ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bench:
    spec: Path
    work: Path
    baseline: Path  # a finished sweep's data dir, copied by the faults that damage a finished store

    def fresh(self, name: str) -> Path:
        return self.work / name / "data"

    def copy(self, name: str) -> Path:
        target = self.work / name / "data"
        shutil.copytree(self.baseline, target, ignore=shutil.ignore_patterns("logs", "*.lock"))
        return target


def kill_driver(bench: Bench, after: int) -> Outcome:
    outcome = Outcome(f"kill -9 driver after {after} jobs")
    data = bench.fresh(f"kill-{after}")
    with driver(bench.spec, data, data.parent / "sweep.log") as process:
        if wait_for(process, lambda: finished_jobs(data) >= after):
            process.send_signal(signal.SIGKILL)
            outcome.injected = True
            process.wait()
            outcome.how = f"SIGKILL with {finished_jobs(data)} jobs finished"
        outcome.first_rc = process.wait()
    faulted_run(outcome, data.parent / "sweep.log")
    before = snapshot(data)
    rerun(outcome, bench.spec, data)
    judge(outcome, data, before)
    return outcome


def kill_build_worker(bench: Bench) -> Outcome:
    outcome = Outcome("kill -9 Ray worker in a build")
    data = bench.fresh("kill-worker")
    with driver(bench.spec, data, data.parent / "sweep.log") as process:
        found: list[psutil.Process] = []

        def building() -> bool:
            if (worker := build_worker(process.pid)) is not None:
                found.append(worker)
            return bool(found)

        if wait_for(process, building, 0.02):
            with contextlib.suppress(psutil.Error):
                found[0].kill()
                outcome.injected = True
                outcome.how = f"SIGKILL to pid {found[0].pid} ({BUILD_TITLE})"
        outcome.first_rc = process.wait(timeout=SWEEP_TIMEOUT_S)
        outcome.how += f"; the sweep went on and ended: {faulted_run(outcome, data.parent / 'sweep.log')}"
    before = snapshot(data)
    rerun(outcome, bench.spec, data)
    judge(outcome, data, before)
    return outcome


def interrupt(bench: Bench, after: int) -> Outcome:
    outcome = Outcome(f"SIGINT (Ctrl-C) after {after} jobs")
    data = bench.fresh("sigint")
    with driver(bench.spec, data, data.parent / "sweep.log") as process:
        if wait_for(process, lambda: finished_jobs(data) >= after):
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the driver and the local Ray it started
            outcome.injected = True
        outcome.first_rc = process.wait(timeout=SWEEP_TIMEOUT_S)
    with contextlib.closing(_read(data / "farm.db")) as c:
        stored = c.execute("SELECT status FROM sweeps ORDER BY id DESC").fetchone()[0]
    outcome.how = f"exit {outcome.first_rc}, sweep stored as {stored}: {faulted_run(outcome, data.parent / 'sweep.log')}"
    before = snapshot(data)
    rerun(outcome, bench.spec, data)
    judge(outcome, data, before)
    return outcome


def _engines(data: Path) -> list[tuple[str, str]]:
    """(build key, engine sha256) of every ok build."""
    with contextlib.closing(_read(data / "farm.db")) as c:
        return list(c.execute("SELECT b.key, b.engine_sha256 FROM builds b WHERE b.status = 'ok' AND b.engine_sha256 IS NOT NULL "
                              "ORDER BY b.key"))


def corrupt_engine(bench: Bench) -> Outcome:
    """One engine's bytes altered: verify names it, pull refuses it, --repair plus the re-run mend it, pull works again."""
    outcome = Outcome("engine bytes altered")
    data = bench.copy("corrupt")
    before = snapshot(data)
    key, sha = _engines(data)[0]
    path = data / "artifacts" / sha[:2] / sha
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    outcome.injected = True
    out = data.parent / "pulled"
    found = farm("verify", "--data-dir", str(data))
    pulled = farm("pull", key, "--out", str(out), "--data-dir", str(data))
    outcome.first_rc = found.returncode
    outcome.how = (f"verify exit {found.returncode}: {' | '.join(found.stdout.splitlines()[:2])}; "
                   f"pull exit {pulled.returncode}: {pulled.stderr.strip()}")
    mended = farm("verify", "--repair", "--data-dir", str(data))
    outcome.repaired = True
    outcome.notes.append(f"verify --repair exit {mended.returncode}: " + " | ".join(mended.stdout.splitlines()[:4]))
    rerun(outcome, bench.spec, data)
    again = farm("pull", key, "--out", str(out), "--data-dir", str(data))
    outcome.notes.append(f"pull after the re-run: exit {again.returncode}")
    if again.returncode != 0:
        outcome.notes.append(again.stderr.strip())
    judge(outcome, data, before)
    outcome.verify_clean = outcome.verify_clean and again.returncode == 0 and found.returncode == 1 and pulled.returncode != 0
    return outcome


def corrupt_engine_redo(bench: Bench) -> Outcome:
    """One engine's bytes altered, then `farm sweep --redo-from build` without a repair: the rebuilt engine has the
    same sha256, and writing it must replace the bad file (it once kept it: 30/30 ok and `pull` still failed)."""
    outcome = Outcome("engine bytes altered, --redo-from build")
    data = bench.copy("corrupt-redo")
    before = snapshot(data)  # the redo rewrites every build and what follows (rows rewritten), with the same keys and sha256s
    key, sha = _engines(data)[0]
    path = data / "artifacts" / sha[:2] / sha
    path.write_bytes(path.read_bytes()[:-1] + b"?")
    outcome.injected = True
    redo = farm("sweep", str(bench.spec), "--data-dir", str(data), "--redo-from", "build")
    outcome.first_rc = redo.returncode
    outcome.ansi_lines += coloured(redo.stdout + redo.stderr)
    pulled = farm("pull", key, "--out", str(data.parent / "pulled"), "--data-dir", str(data))
    outcome.how = f"--redo-from build exit {redo.returncode}; pull exit {pulled.returncode} {pulled.stderr.strip()}"
    rerun(outcome, bench.spec, data)
    judge(outcome, data, before)
    outcome.verify_clean = outcome.verify_clean and pulled.returncode == 0
    return outcome


def delete_artifact(bench: Bench) -> Outcome:
    """An engine file deleted: verify names it, --repair marks its build for redo, the re-run rebuilds it. (A
    re-run alone would rebuild it too, since it checks that the files of the rows it keeps are there: this case
    checks verify's way.)"""
    outcome = Outcome("artifact file deleted")
    data = bench.copy("deleted")
    before = snapshot(data)
    key, sha = _engines(data)[-1]
    (data / "artifacts" / sha[:2] / sha).unlink()
    outcome.injected = True
    found = farm("verify", "--data-dir", str(data))
    outcome.first_rc = found.returncode
    outcome.how = f"engine of build {key[:12]}; verify exit {found.returncode}: {' | '.join(found.stdout.splitlines()[:2])}"
    mended = farm("verify", "--repair", "--data-dir", str(data))
    outcome.repaired = True
    outcome.notes.append(f"verify --repair exit {mended.returncode}: " + " | ".join(mended.stdout.splitlines()[:3]))
    rerun(outcome, bench.spec, data)
    judge(outcome, data, before)
    outcome.verify_clean = outcome.verify_clean and found.returncode == 1
    return outcome


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[bool]:
    """A real tmpfs of `size` at `where` (root only); yields whether it is mounted."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def resize(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def full_disk_at_creation(bench: Bench) -> Outcome:
    outcome = Outcome("full disk while the store is created")
    mount = bench.work / "full-create"
    with tmpfs(mount, "128k") as mounted:
        if not mounted:
            outcome.notes.append("mount -t tmpfs failed (not root?)")
            return outcome
        data = mount / "data"
        first = farm("sweep", str(bench.spec), "--data-dir", str(data))
        outcome.injected = True
        outcome.first_rc = first.returncode
        outcome.how = f"128 KiB tmpfs: exit {first.returncode}: {(first.stderr or first.stdout).strip().splitlines()[-1:]}"
        before = snapshot(data) if (data / "farm.db").exists() else {}
        resize(mount, "64m")
        rerun(outcome, bench.spec, data)
        judge(outcome, data, before)
    return outcome


def fill(where: Path) -> int:
    """Write a file until the disk is full; returns the bytes it took."""
    written = 0
    with contextlib.suppress(OSError), (where / "filler").open("wb") as out:
        block = b"\0" * (1 << 16)
        while True:
            out.write(block)
            out.flush()
            written += len(block)
    return written


def disk_fills_mid_sweep(bench: Bench, after: int) -> Outcome:
    outcome = Outcome(f"disk fills after {after} jobs")
    mount = bench.work / "full-mid"
    with tmpfs(mount, "64m") as mounted:
        if not mounted:
            outcome.notes.append("mount -t tmpfs failed (not root?)")
            return outcome
        data = mount / "data"
        with driver(bench.spec, data, bench.work / "full-mid.log") as process:
            if wait_for(process, lambda: finished_jobs(data) >= after):
                taken = fill(mount)
                outcome.injected = True
                outcome.how = f"{taken / 1e6:.1f} MB filler at {finished_jobs(data)} jobs finished"
            outcome.first_rc = process.wait(timeout=SWEEP_TIMEOUT_S)
        outcome.how += f"; the sweep ended: {faulted_run(outcome, bench.work / 'full-mid.log')}"
        before = snapshot(data)
        (mount / "filler").unlink()
        rerun(outcome, bench.spec, data)
        judge(outcome, data, before)
    return outcome


# --- the table ----------------------------------------------------------------------------------

COLUMNS = ("fault", "injected", "first rc", "re-run rc", "results before", "lost", "rewritten", "duplicated", "repair", "verify clean",
           "integrity", "ansi")


def row(o: Outcome) -> tuple[str, ...]:
    return (o.fault, "yes" if o.injected else "no", str(o.first_rc), str(o.rerun_rc), str(o.results_before), str(o.results_lost),
            str(o.rows_rewritten), str(o.rows_duplicated), "yes" if o.repaired else "no", "yes" if o.verify_clean else "NO", o.integrity,
            str(o.ansi_lines))


def print_table(outcomes: list[Outcome]) -> None:
    rows = [COLUMNS, *(row(o) for o in outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for o in outcomes:
        print(f"\n{o.fault}: {o.how}")
        for note in o.notes:
            print(f"  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu" / "fault_injection.json")
    parser.add_argument("--kill-after", type=int, nargs="+", default=[2, 5, 9], help="jobs finished when the driver is killed")
    parser.add_argument("--only", nargs="*", default=None, help="fault names to run (kill, worker, sigint, corrupt, delete, create, fill)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="farm-faults-"))
    spec = work / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(data=ROOT / "calibration_data")))
    baseline = work / "baseline" / "data"
    started = time.perf_counter()
    first = farm("sweep", str(spec), "--data-dir", str(baseline))
    if first.returncode != 0:
        sys.exit(f"the baseline sweep exited {first.returncode}: {first.stderr.strip()[-500:]}")
    bench = Bench(spec, work, baseline)
    jobs = len(snapshot(baseline))
    faults: dict[str, Callable[[], list[Outcome]]] = {
        "kill": lambda: [kill_driver(bench, n) for n in args.kill_after],
        "worker": lambda: [kill_build_worker(bench)],
        "sigint": lambda: [interrupt(bench, 4)],
        "corrupt": lambda: [corrupt_engine(bench), corrupt_engine_redo(bench)],
        "delete": lambda: [delete_artifact(bench)],
        "create": lambda: [full_disk_at_creation(bench)],
        "fill": lambda: [disk_fills_mid_sweep(bench, 5)],
    }
    outcomes: list[Outcome] = []
    try:
        for name, run in faults.items():
            if args.only is None or name in args.only:
                outcomes += run()
                print(f"done: {outcomes[-1].fault} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(outcomes)
    clean = all(o.injected and o.rerun_rc == 0 and o.results_lost == 0 and o.rows_duplicated == 0 and o.verify_clean
                and o.integrity == "ok" and o.ansi_lines == 0 for o in outcomes)
    device = describe()
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": {"cpu": device.cpu.model, "isa": device.cpu.isa_level, "cores": device.cpu.logical_cores},
        "spec": textwrap.dedent(SPEC.format(data="calibration_data")),
        "jobs": jobs,
        "faults_injected": sum(o.injected for o in outcomes),
        "results_lost": sum(o.results_lost for o in outcomes),
        "rows_duplicated": sum(o.rows_duplicated for o in outcomes),
        "all_clean": clean,
        "seconds": round(time.perf_counter() - started),
        "outcomes": [asdict(o) for o in outcomes],
    }
    print(f"\n{result['faults_injected']} faults injected into a {jobs}-job sweep: {result['results_lost']} results lost, "
          f"{result['rows_duplicated']} rows duplicated; every check clean: {clean} ({result['seconds']} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()

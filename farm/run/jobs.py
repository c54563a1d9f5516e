"""What a sweep is made of: jobs with content keys, and the targets they run on.

A job's key is a hash of everything that determines its result: its parents' keys, the
backend and its version, the options and the target. The same spec on the same fleet
always yields the same keys, which is what makes resume and caching free. A job names its
parents by field (`BuildJob.variant_key`), never by position. Each stage's job type lives with its
stage (farm.run.stages).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from workers.structs import Preprocess, Target

KEY_VERSION = 1  # bump to invalidate every cached result after a change in what a stage computes


def content_key(stage: str, **parts: Any) -> str:
    payload = json.dumps({"stage": stage, "v": KEY_VERSION, **parts}, sort_keys=True, default=_plain)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot hash {type(value).__name__}")


@dataclass(frozen=True)
class TargetGroup:
    """A target and what the cluster offers for it: the node ids and backend versions there."""

    target: Target
    nodes: tuple[str, ...]
    backends: dict[str, str] = field(default_factory=dict)  # name -> version on these nodes
    cpu_arch: str = "x86_64"  # of the nodes: which int8 layout ONNX Runtime computes faithfully there
    int8_dot_32bit: bool = True  # every node's int8 dot products accumulate in 32 bits (VNNI, AMX, Arm)


@dataclass(frozen=True)
class KeyInputs:
    """What a model's export depends on beyond its spec's fields (farm.run.model_inputs says what and how)."""

    files: dict[str, dict[str, str]]  # kind (FACTORY, ONNX_FILE, EXTERNAL_DATA) -> {path as shown: sha256}
    versions: dict[str, str]  # "torchvision": its version; "version": the spec's

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "versions": self.versions}

    @staticmethod
    def from_json(data: Any) -> KeyInputs | None:
        """From a stored spec (untrusted JSON): None where it holds no such record."""
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not isinstance(data.get("versions"), dict):
            return None
        files = {str(kind): {str(k): str(v) for k, v in found.items()} for kind, found in data["files"].items() if isinstance(found, dict)}
        return KeyInputs(files, {str(k): str(v) for k, v in data["versions"].items()})


@dataclass(frozen=True)
class DataRef:
    """Which real inputs a stage uses: the driver loads them (workers never read files), then takes
    the first `count` rows for calibration or the last `count` for fidelity, so they never overlap."""

    path: Path
    preprocess: Preprocess
    input_shape: tuple[int, ...]
    part: str  # "calibration" | "heldout"
    count: int
    reserved: int  # rows the other part takes from the same data (0 when it uses other data)
    labels: Path | None
    digest: str
    excluded: tuple[str, ...] = ()  # files of this part's rows left out (judge images that copy calibration images)


@dataclass(frozen=True)
class Job:
    stage: ClassVar[str]
    parents: ClassVar[tuple[str, ...]] = ()  # the fields that hold the keys (or tuples of keys) of the jobs this one consumes
    runs_after_failures: ClassVar[bool] = False  # True: runs once every parent ended, however; never blocked
    key: str
    label: str

    @property
    def target_id(self) -> str | None:
        """The target this job must run on a node of; None: any node will do."""
        target = getattr(self, "target", None) or getattr(getattr(self, "request", None), "target", None)
        return target.id if target is not None else None

    @property
    def needs(self) -> tuple[str, ...]:
        """The keys of the jobs whose results this one consumes."""
        found: list[str] = []
        for name in self.parents:
            value = getattr(self, name)
            found += [key for key in value if key] if isinstance(value, tuple) else [value] if value else []
        return tuple(found)


@dataclass
class Plan:
    jobs: list[Job]
    notes: list[str]  # what the spec asked for that this fleet cannot do, one line each
    changes: list[str] = field(default_factory=list)  # models whose inputs changed since the last sweep of the spec, one line each

    def by_stage(self, stage: str) -> list[Job]:
        return [job for job in self.jobs if job.stage == stage]

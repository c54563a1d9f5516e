"""What an inference costs: a price per hour for each target kind, and the cost of a million
inferences at a build's measured throughput.

Prices are by the hour, in USD, on demand: one GPU of a kind (matched by a word of its name: "H100"
prices "NVIDIA H100 80GB HBM3 / sm_90"), or one CPU core for CPU targets, counted by the threads the
benchmark ran (`intra_op_threads`; 0, ONNX Runtime's and PyTorch's default, means one per physical core of
the node that timed it). farm ships a default table (prices.yaml, with its source and date); a sweep's
`prices:` or `--prices FILE` replaces entries of it.

    cost per million inferences = USD per hour / (inferences per second x 3600) x 1,000,000
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

HOUR_S = 3600.0
PER = 1_000_000  # costs are per million inferences


class PricesError(ValueError):
    """A prices file or section that cannot be read: the message names the file and the field."""


@dataclass(frozen=True)
class Prices:
    gpu_hour: dict[str, float] = field(default_factory=dict)  # a word of a GPU's name -> USD per GPU-hour
    cpu_core_hour: float | None = None  # USD per core-hour (one hardware thread)
    source: str = ""
    date: str = ""
    origin: str = ""  # where these prices were read: "farm's defaults (2026-05)", "prices.yaml over farm's defaults"

    @classmethod
    def default(cls) -> Prices:
        text = Path(__file__).with_name("prices.yaml").read_text()  # package data (pyproject.toml)
        found = cls.parse(yaml.safe_load(text), "farm's default prices (farm/results/prices.yaml)")
        return replace(found, origin=f"farm's defaults ({found.date})")

    @classmethod
    def parse(cls, found: Any, where: str) -> Prices:
        """A prices mapping ({gpu: {H100: 3.0}, cpu_core_hour: 0.04, source:, date:}); `where` names it in errors."""
        if not isinstance(found, Mapping):
            raise PricesError(f"{where}: expected a mapping with 'gpu' and/or 'cpu_core_hour'")
        unknown = sorted(set(found) - {"gpu", "cpu_core_hour", "source", "date"})
        if unknown:
            raise PricesError(f"{where}: unknown field {unknown[0]!r} (known: gpu, cpu_core_hour, source, date)")
        gpus = found.get("gpu") or {}
        if not isinstance(gpus, Mapping):
            raise PricesError(f"{where}: gpu: expected a mapping of GPU name to USD per hour, e.g. {{H100: 3.0}}")
        prices = {str(name): _price(value, f"{where}: gpu.{name}") for name, value in gpus.items()}
        core = found.get("cpu_core_hour")
        return cls(prices, None if core is None else _price(core, f"{where}: cpu_core_hour"),
                   str(found.get("source") or ""), str(found.get("date") or ""), where)

    @classmethod
    def from_file(cls, path: Path) -> Prices:
        try:
            found = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise PricesError(f"{path}: cannot read prices: {type(error).__name__}: {str(error).splitlines()[0]}") from None
        return cls.parse(found, str(path))

    def over(self, base: Prices) -> Prices:
        """These prices, with `base`'s for whatever these leave out."""
        return replace(base, gpu_hour=base.gpu_hour | self.gpu_hour,
                       cpu_core_hour=base.cpu_core_hour if self.cpu_core_hour is None else self.cpu_core_hour,
                       source="; ".join(filter(None, (self.source or f"{self.origin}: no source given", base.source))),
                       date=self.date or base.date, origin=f"{self.origin} over {base.origin}")

    def gpu_price(self, target: str) -> float | None:
        """The price of the longest GPU name that is a word of the target's (so 'A100' never prices an 'A1000')."""
        named = [n for n in self.gpu_hour if re.search(rf"(?<![A-Za-z0-9]){re.escape(n)}(?![A-Za-z0-9])", target, re.IGNORECASE)]
        return self.gpu_hour[max(named, key=len)] if named else None

    def hourly(self, target: str, cores: int | None) -> float | None:
        """USD per hour of what one benchmark of `target` used; None where no price applies."""
        if target.startswith("cpu:"):
            return None if self.cpu_core_hour is None or not cores else self.cpu_core_hour * cores
        return self.gpu_price(target)


def cores_used(options: Mapping[str, Any], physical_cores: int | None) -> int | None:
    """The CPU cores a benchmark ran on: its intra-op threads, or every physical core where it left that at 0."""
    threads = int(options.get("intra_op_threads") or 0)
    return threads if threads > 0 else physical_cores


def cost_per_million(usd_per_hour: float | None, throughput: float | None) -> float | None:
    """USD for a million inferences at `throughput` inferences a second."""
    if usd_per_hour is None or not throughput:
        return None
    return usd_per_hour / (throughput * HOUR_S) * PER


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
        raise PricesError(f"{where}: expected a price in USD per hour (a number >= 0), got {value!r}")
    return float(value)

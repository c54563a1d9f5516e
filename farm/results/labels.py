"""How a person names a build in a table: a short key (the first characters of its build key, which
`farm pull` and the dashboard accept back) and an engine label that prints only the options telling
the table's rows apart. Shared by the terminal, the report and the dashboard."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

SHORT_KEY = 8  # hex characters: unique among thousands of builds, short enough to type
SHOWN_MATCHES = 5  # an ambiguous prefix names this many of its builds


def short_key(key: str) -> str:
    return key[:SHORT_KEY]


def engine_text(backend: str, precision: str, method: str | None, layout_label: str, quantized_fraction: float | None,
                options: Mapping[str, Any]) -> str:
    """`tensorrt int8 entropy (93% int8) optimization_level=5`: backend, precision with what makes it that
    precision, and the options given."""
    share = f"({quantized_fraction:.0%} {precision})" if quantized_fraction is not None and quantized_fraction < 1 else ""
    shown = " ".join(f"{k}={v}" for k, v in options.items())
    return " ".join(filter(None, (backend, precision, method, layout_label, share, shown)))


class Labelled(Protocol):
    """A build a table names (farm.results.select's Candidate and Untimed)."""

    @property
    def backend(self) -> str: ...

    @property
    def options(self) -> dict[str, Any]: ...

    def engine_label(self, options: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True)
class EngineLabels:
    """The engine labels of one table. An option is printed where its value differs between the table's
    builds of the same backend (options of another backend mean nothing next to them), and not where it
    is at its default; `wide` prints every option, as the build's own label does."""

    varying: dict[str, frozenset[str]] = field(default_factory=dict)  # backend -> options whose value differs
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # backend -> option -> default value
    wide: bool = False

    @staticmethod
    def among(shown: Iterable[Labelled], defaults: Mapping[str, Mapping[str, Any]] | None = None, wide: bool = False) -> EngineLabels:
        by_backend: dict[str, list[dict[str, Any]]] = {}
        for e in shown:
            by_backend.setdefault(e.backend, []).append(e.options)
        varying = {backend: frozenset(name for name in {k for o in rows for k in o}
                                      if len({_same(o.get(name, _MISSING)) for o in rows}) > 1)
                   for backend, rows in by_backend.items()}
        return EngineLabels(varying, defaults or {}, wide)

    def options(self, e: Labelled) -> dict[str, Any]:
        if self.wide:
            return dict(e.options)
        varying, defaults = self.varying.get(e.backend, frozenset()), self.defaults.get(e.backend, {})
        return {k: v for k, v in e.options.items() if k in varying and not (k in defaults and _same(defaults[k]) == _same(v))}

    def of(self, e: Labelled) -> str:
        return e.engine_label(self.options(e))

    def named(self, e: Labelled, key: str) -> str:
        """`1a2b3c4d tensorrt fp16 optimization_level=5`: the short key, then the label."""
        return f"{short_key(key)} {self.of(e)}"


_MISSING = object()


def _same(value: Any) -> Any:
    """A value comparable across rows: 8 and "8" read alike (a spec may say either), lists as tuples."""
    if value is _MISSING:
        return value
    return str(value) if not isinstance(value, list) else str(tuple(value))


class UnknownBuild(ValueError):
    """No build has this key or prefix, or several do: the message is one line."""


def one_build(prefix: str, matches: list[tuple[str, str]]) -> str:
    """The build key a typed key or prefix names, from the (key, label) pairs it prefixes; one line otherwise."""
    if len(matches) == 1:
        return matches[0][0]
    if not matches:
        raise UnknownBuild(f"no build with key {prefix!r} (`farm best` shows each build's key)")
    shown = max(SHORT_KEY, len(prefix) + 4)  # enough characters to tell them apart
    named = "; ".join(f"{k[:shown]} {label}" for k, label in matches[:SHOWN_MATCHES])
    more = f" and {len(matches) - SHOWN_MATCHES} more" if len(matches) > SHOWN_MATCHES else ""
    raise UnknownBuild(f"build key {prefix!r} is ambiguous: {len(matches)} builds start with it ({named}{more}): give more characters")

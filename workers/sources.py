"""Which files a Python factory source (`package.module:function`) is made of, found without importing it.

A factory's module imports torch, and the driver never does (docs/architecture.md), so the module
and the files of its own package that it imports are located with importlib's PathFinder (which
imports nothing) and read with ast. What lies outside the factory's own folder (the standard
library, site-packages) is left out: those are versions, not the user's source.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path


class FactoryNotFound(ValueError):
    """The factory's module is not on the search path; str() is a phrase for one line."""


@dataclass(frozen=True)
class FactorySource:
    """A factory's module file and the files of its package it imports (itself first), with the folder
    they are shown relative to: the search-path entry the top-level package was found in."""

    module: Path
    files: tuple[Path, ...]
    root: Path

    def shown(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_module(name: str, search: Sequence[str]) -> tuple[ModuleSpec, Path] | None:
    """The spec of module `name` and the search-path entry its top-level package lies in, or None.
    Parents are found, not imported: PathFinder only looks at folders."""
    parts = name.split(".")
    spec: ModuleSpec | None = None
    entry: Path | None = None
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if spec is None:
            for folder in search:
                spec = PathFinder.find_spec(prefix, [folder])
                if spec is not None:
                    entry = Path(folder).resolve()
                    break
        else:
            locations = spec.submodule_search_locations
            spec = PathFinder.find_spec(prefix, list(locations)) if locations is not None else None
        if spec is None:
            return None
    assert spec is not None and entry is not None
    return spec, entry


def factory_source(module: str, search: Sequence[str]) -> FactorySource:
    """The module's file and, transitively, every file of its own folder it imports (absolute or
    relative imports, at any depth of the file, package `__init__` files on the way included)."""
    found = find_module(module, search)
    if found is None or not _file_of(found[0]):
        raise FactoryNotFound(f"no module {module!r} on the Python path (searched: the current folder and sys.path)")
    spec, entry = found
    top = module.split(".")[0]
    top_spec = find_module(top, [str(entry)])
    # a package's own files are the package's; a top-level single module's are its folder's
    home = entry / top if top_spec is not None and top_spec[0].submodule_search_locations is not None else entry
    files: dict[Path, None] = {}
    pending = [module, *_parents(module)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        located = find_module(name, [str(entry)])
        path = _file_of(located[0]) if located else None
        if path is None or not path.is_relative_to(home):
            continue
        files[path] = None
        for imported in _imports(path, name, bool(located and located[0].submodule_search_locations)):
            pending += [imported, *_parents(imported)]
    main = _file_of(spec)
    assert main is not None
    return FactorySource(main, (main, *sorted(p for p in files if p != main)), entry)


def defines(path: Path, function: str) -> bool:
    """Whether a module file could have a top-level `function`: defined, assigned or imported under that
    name (under an `if` or `try` too), or a module that makes names it cannot show (`from x import *`,
    a module `__getattr__`)."""
    names = _top_level_names(ast.parse(path.read_bytes(), str(path)).body)
    return bool({function, "*", "__getattr__"} & names)


def _top_level_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try | ast.With):
            nested = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                      *(s for h in getattr(node, "handlers", []) for s in h.body)]
            names |= _top_level_names(nested)
    return names


def _file_of(spec: ModuleSpec) -> Path | None:
    return Path(spec.origin).resolve() if spec.origin and spec.has_location and spec.origin.endswith(".py") else None


def _parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py too."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(path: Path, name: str, is_package: bool) -> list[str]:
    """Module names a file imports: `import a.b`, `from a import b` (b may be a module), `from .x import y`."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError):
        return []  # the export stage reports it, with Python's own message
    package = name if is_package else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join(filter(None, [".".join(anchor), node.module or ""]))
            else:
                base = node.module or ""
            if base:
                found.append(base)
                found += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return found

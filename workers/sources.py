"""Model sources read without importing them: the files a Python factory (`package.module:function`)
is made of, whether it has its function, and the model names torchvision has.

A factory's module imports torch, and the driver never does (docs/architecture.md), so the module
and the files of its own package that it imports are located with importlib's PathFinder (which
imports nothing) and read with ast. What lies outside the factory's own folder (the standard
library, site-packages) is left out: those are versions, not the user's source.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import os
import re
import sys
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


def search_path() -> list[str]:
    """Where a factory's module is looked for: this process's sys.path, and the current folder, which
    Ray adds to every worker's path (a `python -m` driver has it as '')."""
    here = os.getcwd()
    return list(dict.fromkeys([here, *(entry or here for entry in sys.path)]))


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
    """The module's source file; None for what has none here (a namespace package, a compiled module, a zip entry)."""
    if not (spec.origin and spec.has_location and spec.origin.endswith(".py")):
        return None
    path = Path(spec.origin).resolve()
    return path if path.is_file() else None


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


# torchvision registers each builder with `@register_model()` or `@register_model(name="...")` (over
# other decorators, some on several lines): text patterns find them in 6 ms, where ast takes 0.7 s.
REGISTERED = re.compile(r"@register_model\(([^)]*)\)")
REGISTERED_AS = re.compile(r"[\"'](\w+)[\"']")
NEXT_DEF = re.compile(r"^\s*def\s+(\w+)", re.MULTILINE)


def torchvision_models(search: Sequence[str]) -> list[str] | None:
    """The names torchvision's `list_models()` gives, read from its source files (importing torchvision
    imports torch, which the driver never does). None where torchvision is not installed."""
    found = find_module("torchvision", search)
    origin = _file_of(found[0]) if found else None
    if origin is None:
        return None
    names: set[str] = set()
    for path in sorted((origin.parent / "models").rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for call in REGISTERED.finditer(text):
            given = REGISTERED_AS.search(call.group(1))
            builder = NEXT_DEF.search(text, call.end())
            name = given.group(1) if given else builder.group(1) if builder else None
            if name:
                names.add(name)
    return sorted(names)


def factory_problem(source: str, search: Sequence[str]) -> str | None:
    """Why `package.module:function` cannot be a factory, read without importing it: the module is not on
    the path, does not parse, or has no such top-level name (the closest names suggested). None when it may."""
    module, _, function = source.partition(":")
    try:
        found = factory_source(module, search)
    except FactoryNotFound as exc:
        return f"cannot import factory {source}: {exc}"
    shown = found.shown(found.module)
    try:
        names = _top_level_names(ast.parse(found.module.read_bytes(), str(found.module)).body)
    except SyntaxError as exc:
        return f"cannot import factory {source}: {shown} line {exc.lineno}: {exc.msg}"
    if {function, "*", "__getattr__"} & names:
        return None
    return f"factory {source}: {shown} has no function {function!r}{closest(function, sorted(names))}"


def closest(name: str, known: Sequence[str]) -> str:
    """` (closest: a, b, c)`, or "" when nothing is close."""
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (closest: {', '.join(near)})" if near else ""

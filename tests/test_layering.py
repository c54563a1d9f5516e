"""Who may import whom (docs/architecture.md): checked on the source, so a stray import fails CI.

Each folder has an allowlist of the first-party modules it may import, and a denylist of
libraries it must not; the most specific folder's rule holds:

- farm/store/ knows rows, never jobs: nothing of the farm outside farm/store;
- farm/results/ (the read side: metrics, evidence, verdicts, queries, winners, the report file,
  delivery) reads the store and never imports the run side or the CLI;
- farm/run/ (spec, plan, jobs, stages, schedule, driver, tasks, cluster) may read results and the
  store, never the CLI;
- farm/cli/ may use all of farm and workers, never the dashboard;
- workers/ runs on any worker: plain functions, only workers, never Ray, SQLAlchemy or Streamlit;
- dashboard/ reads: the store and farm/results, never the run side, the CLI or workers.

Every import is resolved to the module it loads, wherever it is written (inside functions and
under TYPE_CHECKING too): `from farm.run import driver` is farm.run.driver, `from ..driver import x`
is resolved against the file's package, and `importlib.import_module("farm.run.driver")` with a
literal name is an import of farm.run.driver. Any other use of importlib (a computed module name,
find_spec, metadata) is named and must be allow-listed below per file. The module graph of
farm/, workers/ and dashboard/ has no cycles.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = ("farm", "workers", "dashboard")  # the packages whose files are checked (and form the module graph)
FIRST_PARTY = (*FOLDERS, "tests")
# The read side of farm that the dashboard shows: results and the store, never the run side (farm.run) or the CLI.
READ_SIDE = ("farm.store", "farm.results")


@dataclass(frozen=True)
class Rule:
    allowed: tuple[str, ...]  # first-party modules (and everything below them) the folder may import
    banned: tuple[str, ...] = ()  # libraries it must not import


# A key is a folder or one file; the longest that holds a file gives its rule.
RULES = {
    "farm/store": Rule(allowed=("farm.store",), banned=("ray",)),
    "farm/results": Rule(allowed=(*READ_SIDE, "workers"), banned=("ray",)),
    "farm/run": Rule(allowed=("farm.run", *READ_SIDE, "workers"), banned=("streamlit",)),
    "farm": Rule(allowed=("farm", "workers"), banned=("streamlit",)),
    "workers": Rule(allowed=("workers",), banned=("ray", "sqlalchemy", "alembic", "streamlit")),
    "dashboard": Rule(allowed=("dashboard", *READ_SIDE), banned=("ray",)),
}

# importlib beyond a literal import_module, per file, and why it is there.
DYNAMIC = {
    "farm/cli/commands.py": {"importlib.metadata"},  # farm --version
    "farm/run/model_inputs.py": {"importlib.metadata"},  # torchvision's version in an export's key
    "workers/sources.py": {"importlib.machinery"},  # PathFinder locates a model factory without importing it
    "workers/models.py": {"importlib.import_module(<computed>)", "importlib.invalidate_caches"},  # the spec's model factory
    "workers/cuda.py": {"importlib.import_module(<computed>)"},  # cuda-python's module names differ between versions
    # availability() reads the installed wheel's version without importing the library
    "workers/backends/onnxruntime.py": {"importlib.metadata"},
    "workers/backends/torch/__init__.py": {"importlib.metadata"},
    # the TensorRT flavour chosen per build (tensorrt or tensorrt_rtx), found without importing it
    "workers/backends/tensorrt/options.py": {"importlib.metadata", "importlib.util.find_spec", "importlib.import_module(<computed>)"},
}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the checked folders, by dotted name (a package by its own name)."""
    return {module_name(root, path): path for folder in FOLDERS for path in sorted((root / folder).rglob("*.py"))}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@dataclass
class Imports:
    modules: set[str]  # what the file loads, each resolved to a module where the tree has one
    dynamic: set[str]  # importlib uses that are not a literal import_module
    errors: list[str]  # relative imports that leave the tree


def imported(path: Path, root: Path, known: set[str] | None = None) -> Imports:
    """Every module a file imports, at any depth of the file (inside functions too), resolved."""
    known = set(modules(root)) if known is None else known
    this = module_name(root, path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = Imports(set(), set(), [])

    def resolve(base: str, name: str) -> str:
        """`from base import name`: base.name where that is a module of the tree, else base."""
        return f"{base}.{name}" if f"{base}.{name}" in known else base

    tree = ast.parse(path.read_text(), str(path))
    calls: set[int] = set()  # the nodes of import_module calls, so their `importlib.import_module` is not counted again
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.modules.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts) - 1:
                    found.errors.append(f"{path.relative_to(root)}: a relative import of level {node.level} leaves {package or 'the tree'}")
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "importlib" or base.startswith("importlib."):
                for alias in node.names:
                    use = f"{base}.{alias.name}" if base == "importlib" else base
                    if use != "importlib.import_module":
                        found.dynamic.add(use)
                continue
            for alias in node.names:
                found.modules.add(resolve(base, alias.name))
        elif isinstance(node, ast.Call) and _is_import_call(node):
            calls.add(id(node.func))
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
                found.modules.add(first.value)
            else:
                found.dynamic.add("importlib.import_module(<computed>)")
    # importlib.util inside importlib.util.find_spec: count the longest chain once
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in calls | inner:
            chain = _dotted(node)
            if chain and chain.split(".")[0] == "importlib":
                found.dynamic.add(chain)
    found.modules = {m for m in found.modules if not (m == "importlib" or m.startswith("importlib."))}
    return found


def _is_import_call(node: ast.Call) -> bool:
    """importlib.import_module(...), import_module(...) (from importlib) or __import__(...)."""
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in ("import_module", "__import__")
    return isinstance(func, ast.Attribute) and func.attr == "import_module" and _dotted(func) == "importlib.import_module"


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def rule_for(relative: str) -> Rule:
    folder = max((f for f in RULES if relative == f or relative.startswith(f + "/")), key=len)
    return RULES[folder]


def violations(root: Path) -> list[str]:
    """Every import against its folder's rule, every unlisted importlib use, every import cycle."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    found: list[str] = []
    for name, path in known.items():
        relative = path.relative_to(root).as_posix()
        rule = rule_for(relative)
        imports = imported(path, root, set(known))
        found += imports.errors
        graph[name] = set()
        for module in sorted(imports.modules):
            top = module.split(".")[0]
            if top in FOLDERS:
                if module not in known:
                    found.append(f"{relative} imports {module}, which is no module of the tree")
                    continue
                if module != name:
                    graph[name].add(module)
            if top in FIRST_PARTY and not any(under(module, allowed) for allowed in rule.allowed):
                found.append(f"{relative} imports {module}")
            elif any(under(module, banned) for banned in rule.banned):
                found.append(f"{relative} imports {module}")
        unlisted = imports.dynamic - DYNAMIC.get(relative, set())
        found += [f"{relative} uses {use} (allow-list it in DYNAMIC with the reason)" for use in sorted(unlisted)]
        stale = DYNAMIC.get(relative, set()) - imports.dynamic
        found += [f"{relative} no longer uses {use}: drop it from DYNAMIC" for use in sorted(stale)]
    found += [f"import cycle among {', '.join(group)}: {' -> '.join(_path_through(group, graph))}" for group in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other through imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _path_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest way from the group's first module back to itself, inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return group


def test_the_tree_keeps_its_layers() -> None:
    assert violations(REPO) == []


def test_every_rule_and_allowance_names_a_path_of_the_tree() -> None:
    """A file moved or renamed would leave its rule (or its importlib allowance) holding nothing, silently."""
    assert [key for key in [*RULES, *DYNAMIC] if not (REPO / key).exists()] == []
    assert [module for module in READ_SIDE if module not in modules(REPO)] == []


def test_the_dashboard_reads_only_the_store_and_the_read_side() -> None:
    """The allowlist is what the dashboard really uses: a module dropped from it would fail the check above."""
    used = {m for name, path in modules(REPO).items() if name.split(".")[0] == "dashboard"
            for m in imported(path, REPO).modules if m.split(".")[0] == "farm"}
    assert used and all(any(under(m, allowed) for allowed in READ_SIDE) for m in used), used
    assert {m.rsplit(".", 1)[-1] for m in used} >= {"store", "select", "queries", "metrics"}


# Each deliberate violation: a file written into a copy of the tree, and the finding it must cause.
PLANTED = {
    "relative import in the store": ("farm/store/probe.py", "def f():\n    from ..run.driver import run_sweep\n",
                                     "farm/store/probe.py imports farm.run.driver"),
    "from farm.run import driver in the store": ("farm/store/probe.py", "from farm.run import driver\n",
                                             "farm/store/probe.py imports farm.run.driver"),
    "from farm.run import driver in the dashboard": ("dashboard/probe.py", "from farm.run import driver\n",
                                                 "dashboard/probe.py imports farm.run.driver"),
    "importlib.import_module in the dashboard": ("dashboard/probe.py", "import importlib\nimportlib.import_module('farm.run.driver')\n",
                                                 "dashboard/probe.py imports farm.run.driver"),
    "import_module by its own name in the store": ("farm/store/probe.py", "from importlib import import_module\nimport_module('farm.run.plan')\n",
                                                   "farm/store/probe.py imports farm.run.plan"),
    "the store importing the spec": ("farm/store/probe.py", "def f():\n    import farm.run.spec\n",
                                     "farm/store/probe.py imports farm.run.spec"),
    # a new module: planted in one the run side imports (queries, through the retime stage), it would be a cycle too
    "the read side importing the plan": ("farm/results/probe.py", "def _probe():\n    from farm.run import plan\n",
                                         "farm/results/probe.py imports farm.run.plan"),
    "the store importing the farm package": ("farm/store/probe.py", "import farm\n", "farm/store/probe.py imports farm"),
    "workers importing farm relatively": ("workers/backends/probe.py", "from ... import farm\n",
                                          "workers/backends/probe.py: a relative import of level 3 leaves workers.backends"),
    "workers importing ray through from": ("workers/probe.py", "from ray import util\n", "workers/probe.py imports ray"),
    "workers importing the dashboard": ("workers/probe.py", "from dashboard import data\n", "workers/probe.py imports dashboard.data"),
    "a computed import_module in workers": ("workers/probe.py", "import importlib\nname = 'farm'\nimportlib.import_module(name)\n",
                                            "workers/probe.py uses importlib.import_module(<computed>) (allow-list it in DYNAMIC with the reason)"),
    "find_spec in farm": ("farm/probe.py", "import importlib.util\nimportlib.util.find_spec('ray')\n",
                          "farm/probe.py uses importlib.util.find_spec (allow-list it in DYNAMIC with the reason)"),
    "a module that does not exist": ("farm/probe.py", "from workers.torch_engines import open_engine\n",
                                     "farm/probe.py imports workers.torch_engines, which is no module of the tree"),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("tree")
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    yield root


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_planted_violation_is_caught(tree: Path, case: str) -> None:
    """The check above could pass by reading nothing: each way around it must be found in a copy of the tree."""
    relative, source, finding = PLANTED[case]
    probe = tree / relative
    original = probe.read_text() if probe.exists() else None
    probe.write_text((original or "") + source)  # a new file, or an import added at the end of one
    try:
        assert violations(tree) == [finding]
    finally:
        if original is None:
            probe.unlink()
        else:
            probe.write_text(original)


def test_a_planted_cycle_is_caught(tree: Path) -> None:
    """workers.bench importing a module that imports it back closes a cycle."""
    probe = tree / "workers/probe.py"
    probe.write_text("from workers import bench\n")
    bench = tree / "workers/bench.py"
    original = bench.read_text()
    bench.write_text(original + "\n\ndef _cycle() -> None:\n    from . import probe\n")
    try:
        assert violations(tree) == ["import cycle among workers.bench, workers.probe: workers.bench -> workers.probe -> workers.bench"]
    finally:
        probe.unlink()
        bench.write_text(original)


def test_the_copy_is_clean_without_a_plant(tree: Path) -> None:
    """The planted cases above find their plant and nothing else only because the copy starts clean."""
    assert violations(tree) == []

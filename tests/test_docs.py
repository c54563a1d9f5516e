"""The docs match the code (issue 21, must-have 9): every ```yaml block of README.md and docs/*.md goes
through the spec loader, and the specs in sweeps/ use only keys the docs show.

A block is a whole spec unless an HTML comment on the line before it says otherwise:
  <!-- spec: fragment -->                 its top-level keys replace those of MINIMAL_SPEC, and that loads;
  <!-- spec: error MESSAGE -->            loading it fails with a line that contains MESSAGE;
  <!-- spec: fragment; error MESSAGE -->  both.
A whole spec is also checked against what it points at (check_inputs), read from sweeps/, where the
README's relative paths start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.run.spec import SpecError, check_inputs, load_spec
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# What a fragment completes: the least a spec needs, with the model name the docs' blocks limit themselves to.
MINIMAL_SPEC: dict[str, Any] = {
    "name": "docs",
    "models": [{"name": "resnet50", "source": "torchvision:resnet50", "weights": None}],
    "backends": {"onnxruntime": {}},
}
MARKER = re.compile(r"<!--\s*spec:\s*(?P<body>.*?)\s*-->")
FENCE = re.compile(r"^```ya?ml\s*$")


@dataclass(frozen=True)
class YamlBlock:
    file: Path
    line: int  # of the opening fence, 1-based
    text: str
    fragment: bool
    error: str | None  # the message loading it must fail with

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def yaml_blocks(file: Path) -> list[YamlBlock]:
    lines = file.read_text(encoding="utf-8").splitlines()
    blocks: list[YamlBlock] = []
    for index, line in enumerate(lines):
        if not FENCE.match(line):
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        found = MARKER.search(before)
        parts = [p.strip() for p in found.group("body").split(";")] if found else []
        unknown = [p for p in parts if p != "fragment" and not p.startswith("error ")]
        assert not unknown, f"{file.name}:{index + 1}: unknown spec marker {unknown}"
        error = next((p.removeprefix("error ").strip() for p in parts if p.startswith("error ")), None)
        blocks.append(YamlBlock(file, index + 1, "\n".join(lines[index + 1:end]) + "\n", "fragment" in parts, error))
    return blocks


BLOCKS = [block for file in DOCS for block in yaml_blocks(file)]


def _spec_text(block: YamlBlock) -> str:
    if not block.fragment:
        return block.text
    return yaml.safe_dump({**MINIMAL_SPEC, **yaml.safe_load(block.text)}, sort_keys=False)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_yaml_block_of_the_docs_loads_as_it_says(block: YamlBlock, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(_spec_text(block))
    if block.error is not None:
        with pytest.raises(SpecError) as refused:
            load_spec(path)
        assert block.error in str(refused.value), f"{block.where}: {refused.value}"
        return
    try:
        spec, _ = load_spec(path)
    except SpecError as exc:
        pytest.fail(f"{block.where}: {exc} (a fragment needs <!-- spec: fragment --> on the line before it)")
    if not block.fragment:
        check_inputs(spec, REPO / "sweeps", str(path), call_factories=False)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.fragment], ids=[b.where for b in BLOCKS if b.fragment])
def test_a_block_marked_fragment_is_not_a_whole_spec(block: YamlBlock, tmp_path: Path) -> None:
    """Otherwise the mark hides a whole spec from the stricter test above."""
    path = tmp_path / "spec.yaml"
    path.write_text(block.text)
    with pytest.raises(SpecError):
        load_spec(path)


def test_the_docs_hold_a_whole_spec_and_a_documented_error() -> None:
    """The README's sweep format is whole, and at least one block shows an error the loader gives."""
    assert any(b.file.name == "README.md" and not b.fragment and b.error is None for b in BLOCKS)
    assert any(b.error is not None for b in BLOCKS)


def _keys(data: Any, prefix: str = "") -> set[str]:
    """Dotted key paths, list items under their list's key; a model's kwargs are the builder's, not farm's."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            found.add(path)
            if not path.endswith("kwargs"):
                found |= _keys(value, path)
    elif isinstance(data, list):
        for item in data:
            found |= _keys(item, prefix)
    return found


@pytest.mark.parametrize("sweep", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_sweeps_use_the_documented_keys(sweep: Path) -> None:
    """The quickstart once said `torch: mode: eager` (an old name the loader still takes) where the docs say `kind`."""
    documented = set().union(*(_keys(yaml.safe_load(b.text)) for b in BLOCKS))
    used = _keys(yaml.safe_load(sweep.read_text()))
    assert used - documented == set()
    load_spec(sweep)

"""Reading a spec file: bounded YAML parsing, validation into farm.run.spec.schema's models, and the
one-line error that names the file and the field the user wrote:
`sweeps/x.yaml: backends.onnxruntime.intra_op_threads[0]: expected an integer, got 'two'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from farm.run.spec.checks import resource_problem
from farm.run.spec.errors import SpecError, one_line
from farm.run.spec.schema import SweepSpec

MAX_SPEC_BYTES = 1 << 20  # a spec is a few KB; anything this large is not one
MAX_SPEC_NODES = 100_000  # values in the parsed spec, YAML aliases expanded (a "billion laughs" file)


def load_spec(path: str | Path) -> tuple[SweepSpec, Path]:
    """Load and validate a spec file; returns the spec and the folder its relative paths start from.

    Whatever the file holds, the result is a valid spec or a SpecError whose str is one line
    naming the file (tests/test_fuzz.py holds it to that)."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(one_line(f"{file}: cannot read the spec ({exc.strerror or exc})")) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(one_line(f"{file}: over {MAX_SPEC_BYTES >> 20} MiB: not a sweep spec"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(one_line(f"{file}: not a text file (byte 0x{raw[exc.start]:02x} at offset {exc.start} is not UTF-8)")) from None
    data = _parse_yaml(file, text)
    if not isinstance(data, dict):
        raise SpecError(one_line(f"{file}: expected a mapping with name, models and backends at the top level"))
    if _size(data) > MAX_SPEC_NODES:
        raise SpecError(one_line(f"{file}: over {MAX_SPEC_NODES} values once its YAML aliases are expanded: not a sweep spec"))
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(spec_errors(file, exc, data)) from None
    except RecursionError:
        raise SpecError(one_line(f"{file}: nested too deeply to be a sweep spec")) from None
    problem = resource_problem(spec)
    if problem:
        raise SpecError(one_line(f"{file}: {problem}"))
    return spec, file.absolute().parent


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that a mapping holds twice: YAML forbids it, and PyYAML would
    keep the last one silently (`name:` three times ran the third). Merged keys (`<<: *base`) may still be
    overridden: only keys written in the mapping itself count."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {one_line(str(key))!r}, first on line {first[key].start_mark.line + 1}",
                    key_node.start_mark)
            first[key] = key_node
        return super().construct_mapping(node, deep)


def _parse_yaml(file: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(one_line(f"{file}{where}: not valid YAML ({problem})")) from None
    except RecursionError:
        raise SpecError(one_line(f"{file}: nested too deeply to be a sweep spec")) from None
    except (ValueError, OverflowError, TypeError) as exc:  # a scalar PyYAML cannot build: `2001-13-45` as a date
        raise SpecError(one_line(f"{file}: not valid YAML ({exc})")) from None


def _size(data: Any, budget: int = MAX_SPEC_NODES + 1) -> int:
    """How many values `data` holds with shared (aliased) parts counted each time; stops past `budget`."""
    count, stack = 0, [data]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


MAX_ERRORS = 20  # a spec with more is probably not a sweep spec at all: the first ones say so


def describe_errors(exc: ValidationError, data: Any = None) -> list[str]:
    """Every problem pydantic found, one `field.path: message` each, in the schema's order; a field
    that failed several ways (a union's alternatives) is named once, by its first problem."""
    lines: dict[str, str] = {}
    for error in exc.errors():
        where = _location(error["loc"], data) or "(top level)"
        if where not in lines:
            lines[where] = f"{where}: {_message(error)}"
    return list(lines.values())


def describe_error(exc: ValidationError, data: Any = None) -> str:
    """The first problem alone (describe_errors gives them all)."""
    return describe_errors(exc, data)[0]


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "expected")
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "required field is missing"
    if "input" in error and error["type"] not in ("model_type",) and not isinstance(error["input"], dict | list):
        shown = repr(error["input"])
        return f"{message}, got {shown if len(shown) <= 80 else shown[:77] + '...'}"
    return message


def spec_errors(file: Path, exc: ValidationError, data: Any) -> str:
    """All of a spec's problems at once, one line each naming the file and the field, so a user fixes
    them in one edit instead of one run each."""
    found = describe_errors(exc, data)
    lines = [one_line(f"{file}: {line}") for line in found[:MAX_ERRORS]]
    if len(found) > MAX_ERRORS:
        lines.append(f"{file}: {len(found) - MAX_ERRORS} more problems not shown")
    return "\n".join(lines)


def _location(loc: tuple[Any, ...], data: Any = None) -> str:
    """`a.b[0].c` for pydantic's ("a", "b", 0, "c"); an index the spec never wrote (a mapping read as a
    one-block list) is left out, so the path is the one the user typed."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) and isinstance(data, dict):
            continue  # the validator wrapped this mapping in a list: the user wrote no index
        if isinstance(data, dict):
            data = data.get(item)
        elif isinstance(data, list) and isinstance(item, int) and 0 <= item < len(data):
            data = data[item]
        else:
            data = None
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


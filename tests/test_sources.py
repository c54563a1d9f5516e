"""workers.sources: a factory's own files and torchvision's model names, found without importing either."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from workers.sources import factory_problem, factory_source, search_path, torchvision_models


def test_torchvision_names_read_from_its_source_are_its_list_models() -> None:
    import torchvision

    assert torchvision_models(search_path()) == sorted(torchvision.models.list_models())


def test_a_top_level_module_brings_the_files_of_its_folder_that_it_imports(tmp_path: Path) -> None:
    (tmp_path / "mynet.py").write_text("import numpy\nimport torch\n\n\ndef net():\n    import helpers\n    return helpers.make()\n")
    (tmp_path / "helpers.py").write_text("from shapes import SIDE\n\n\ndef make():\n    return SIDE\n")
    (tmp_path / "shapes.py").write_text("SIDE = 4\n")
    (tmp_path / "other.py").write_text("UNUSED = 1\n")
    found = factory_source("mynet", [str(tmp_path), *sys.path])
    assert [found.shown(p) for p in found.files] == ["mynet.py", "helpers.py", "shapes.py"]  # numpy, torch: not the user's
    assert "mynet" not in sys.modules and "helpers" not in sys.modules  # read, never imported


def test_a_factory_problem_is_one_phrase(tmp_path: Path) -> None:
    (tmp_path / "mynet.py").write_text("from torch import nn\n\nif True:\n    def net():\n        return nn.Identity()\n")
    search = [str(tmp_path), *sys.path]
    assert factory_problem("mynet:net", search) is None  # defined under an `if`: may exist
    assert factory_problem("mynet:nn", search) is None  # imported under that name
    assert factory_problem("mynet:nett", search) == "factory mynet:nett: mynet.py has no function 'nett' (closest: net)"
    assert factory_problem("mynett:net", search) == ("cannot import factory mynett:net: no module 'mynett' on the Python path "
                                                     "(searched: the current folder and sys.path)")


def test_a_process_that_imported_a_factory_exports_its_edited_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a warm Ray worker lives through when one driver sweeps twice (a notebook, a test session):
    the second export reads the factory's files as they are now, not the module imported before."""
    from workers.models import export
    from workers.structs import ModelRef

    name = f"fresh_{uuid.uuid4().hex}"  # a package no other test has imported
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("from torch import nn\n\nfrom .layers import head\n\n\n"
                                       "def net() -> nn.Module:\n    return nn.Sequential(nn.Flatten(), head())\n")
    (package / "layers.py").write_text("from torch import nn\n\n\ndef head() -> nn.Module:\n    return nn.Linear(12, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = ModelRef("m", f"{name}.models:net", None, (3, 2, 2))
    first = export(model)
    (package / "layers.py").write_text("from torch import nn\n\n\ndef head() -> nn.Module:\n"
                                       "    return nn.Sequential(nn.Linear(12, 2), nn.ReLU())\n")
    second = export(model)
    assert second.info.node_count == first.info.node_count + 1
    assert f"{name}.layers" in sys.modules  # imported again, from the edited file

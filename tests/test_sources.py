"""workers.sources: a factory's own files and torchvision's model names, found without importing either."""

from __future__ import annotations

import sys
from pathlib import Path

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

"""The examples in the docstrings run: every module of the serving path and the kernels
with a ``>>>`` example, imported under its ``yujing`` name."""
import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"service": "yujing.service", "kernels": "yujing.kernels", "loadtest": "yujing.loadtest",
           "training": "yujing.training", "yujing": "yujing"}


def _modules_with_examples():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "_generated" in path.parts or ">>>" not in path.read_text():
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts])


MODULES = list(_modules_with_examples())


def test_examples_were_found():
    assert "yujing.service.featurize" in MODULES and "yujing.service.config" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

"""Fixtures for the functional tests (real servers on free ports)."""
import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from conftest_triton import model_repo, triton_server  # noqa: E402,F401  (fixtures)

"""Suite-wide options: slow and benchmark tests are opt-in.

    pytest                      # the CPU suite (what .ci/run runs)
    pytest --run-slow           # + slow tests (e.g. 4M-session tables)
    pytest --run-benchmark      # + the benchmark suites (tests/bench)
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")
    parser.addoption("--run-benchmark", action="store_true", help="run the benchmark suites")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(pytest.mark.skip(reason="slow: opt in with --run-slow"))
        if "benchmark_suite" in item.keywords and not config.getoption("--run-benchmark"):
            item.add_marker(pytest.mark.skip(reason="benchmark: opt in with --run-benchmark"))

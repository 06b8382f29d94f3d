"""Model repositories for the service tests: the committed one (trained models)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_process_repo(tmp_path_factory) -> Path:
    """The committed model repository (the router loads its artifacts in-process)."""
    repo = ROOT / "model_repo"
    if not any(repo.glob("*/*/artifact/model.json")):
        from tests.conftest_triton import make_model_repo

        return make_model_repo(tmp_path_factory.mktemp("repo"))
    return repo

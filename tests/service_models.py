"""The model repository for the service tests: the committed one, with the trained
default models (the router loads their artifacts in-process)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_process_repo(tmp_path_factory=None) -> Path:
    repo = ROOT / "model_repo"
    assert any(repo.glob("*/*/artifact/model.json")), f"no trained model artifacts in {repo}"
    return repo

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    for c in (os.environ.get("MATHRL_DATA"), ROOT.parent / "shared" / "data", ROOT / "data"):
        if c and (Path(c) / "gsm8k" / "test.jsonl").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("GSM8K/SVAMP data not found (../shared/data or $MATHRL_DATA)")
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A fresh (untrained) embedded-default model for the synthetic task, shared by the tests."""
    from mathrl.models import init_model
    from mathrl.runsetup import ModelRecord, write_record
    from mathrl.tasks import load_task

    out = tmp_path_factory.mktemp("tiny")
    task = load_task("synthetic", level=2)
    init_model(task, out, size="tiny", seed=0)
    write_record(out, ModelRecord(task={"name": "synthetic", "level": 2}, stage="init", shots=0))
    return out

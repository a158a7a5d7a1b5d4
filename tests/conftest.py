import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The first 40 train and 40 test problems of GSM8K and 40 SVAMP records (the first 39 and chal-680, the record
# whose Answer contradicts its Equation), with their MIT licences: what the tests read where no full copy is
SLICE = ROOT / "tests" / "data"

# Tests never reach the hub: a loader that finds no local copy fails at once instead of downloading
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"


def shared_data_dir() -> Path | None:
    for c in (os.environ.get("MATHRL_DATA"), ROOT.parent / "shared" / "data", ROOT / "data"):
        if c and (Path(c) / "gsm8k" / "test.jsonl").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """GSM8K and SVAMP: the full copies where they are (CI: ../shared/data; $MATHRL_DATA; ./data), else the slice
    in tests/data, so that no test skips in a bare clone."""
    return shared_data_dir() or SLICE


@pytest.fixture(scope="session")
def data_counts(data_dir) -> dict:
    """What ``data_dir`` holds, counted once (the full copies' numbers are the published ones: GSM8K 7,473 train
    and 1,319 test, SVAMP 1,000; the slice's are its files' lengths)."""
    if data_dir == SLICE:
        # 40 + 40 GSM8K rows with 254 calculator annotations; SVAMP's hash split puts 5 of the 40 records in test
        return {"gsm8k/train": 40, "gsm8k/test": 40, "gsm8k/annotations": 254, "svamp": 40, "svamp/test": 5}
    # measured on the full copies: the hash split puts 196 of SVAMP's 1,000 in test
    return {"gsm8k/train": 7473, "gsm8k/test": 1319, "gsm8k/annotations": 27998, "svamp": 1000, "svamp/test": 196}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A fresh (untrained) embedded-default model for the synthetic task, shared by the tests."""
    from mathrl.models import init_model
    from mathrl.record import ModelRecord
    from mathrl.runsetup import write_record
    from mathrl.tasks import load_task

    out = tmp_path_factory.mktemp("tiny")
    task = load_task("synthetic", level=2)
    init_model(task, out, size="tiny", seed=0)
    write_record(out, ModelRecord(task={"name": "synthetic", "level": 2}, stage="init", shots=0))
    return out

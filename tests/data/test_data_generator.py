"""The generated suite (swe_aem/data/generator.py): committed rows, splits, issue texts,
reproducible regeneration, and (slow) real containers: gold resolves, the buggy tree fails."""

from __future__ import annotations

import json
import random
import re
import subprocess

import pytest

from swe_aem.data import DatasetError, Instance, load_instances
from swe_aem.data import generator as gen
from swe_aem.data.local_suite import materialize_repo


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Instance]]:
    return {name: load_instances("generated", split=name) for name in gen.SPLITS}


def _committed_rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (gen.GENERATED / f"{split}.jsonl").read_text().splitlines()]


def test_suite_size_and_schema(splits):
    every = splits["train"] + splits["test"]
    assert len(every) >= 200
    assert len(splits["test"]) >= 30
    assert len({i.instance_id for i in every}) == len(every)
    for inst in every:
        assert inst.FAIL_TO_PASS, inst.instance_id
        assert not set(inst.FAIL_TO_PASS) & set(inst.PASS_TO_PASS), inst.instance_id
        assert inst.grader == "swebench" and inst.log_parser == "parse_log_pytest"
        assert inst.base_commit in inst.setup_script and inst.base_commit in inst.eval_script


def test_images_are_shared_per_repo(splits):
    every = splits["train"] + splits["test"]
    images: dict[str, set[str]] = {}
    for inst in every:
        images.setdefault(inst.repo, set()).add(inst.image)
    assert all(len(tags) == 1 for tags in images.values()), images
    assert len({i.repo for i in every}) == len(images) >= 3


def test_splits_share_no_function(splits):
    units = {name: {i.extra["unit"] for i in part} for name, part in splits.items()}
    functions = {name: {(i.extra["file"], i.extra["function"]) for i in part} for name, part in splits.items()}
    assert units["train"] and units["test"]
    assert not units["train"] & units["test"]
    assert not functions["train"] & functions["test"]


def test_issue_text_shows_no_diff(splits):
    for inst in splits["train"] + splits["test"]:
        text = inst.problem_statement
        assert "@@" not in text and "diff --git" not in text and "+++ " not in text
        for line in gen.changed_lines(inst.extra["bug_patch"]) + gen.changed_lines(inst.patch):
            assert line not in text, (inst.instance_id, line)
        assert inst.FAIL_TO_PASS[0] in text


def test_gold_is_the_bug_reversed_and_task_commit_reproduces(tmp_path):
    rows = _committed_rows("train")[:2] + _committed_rows("test")[:1]
    for row in rows:
        assert gen.task_commit(row["repo"], row["bug_patch"]) == row["base_commit"]
        tree = tmp_path / row["instance_id"]
        materialize_repo(row["repo"], tree)
        for patch in (row["bug_patch"], row["patch"]):
            subprocess.run(["git", "apply", "-"], input=patch, cwd=tree, text=True, check=True)
        assert subprocess.run(["git", "status", "--porcelain"], cwd=tree, text=True,
                              capture_output=True, check=True).stdout == ""


def test_split_rows_keeps_units_whole():
    rng = random.Random(3)
    rows = [{"instance_id": f"i{n}", "unit": f"m.py::f{rng.randrange(12)}"} for n in range(80)]
    parts = gen.split_rows(rows, seed=5, test_share=0.3)
    assert sum(len(p) for p in parts.values()) == 80
    assert not {r["unit"] for r in parts["train"]} & {r["unit"] for r in parts["test"]}
    assert len(parts["test"]) >= 0.3 * 80
    assert parts == gen.split_rows(list(reversed(rows)), seed=5, test_share=0.3)


def test_issue_text_drops_a_message_that_quotes_the_change():
    bug = "--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n def f(x):\n-    return x + 1\n+    return x - 1\n"
    cand = gen.Candidate("swe-aem__m.k__1", "swe-aem/m", "m.py", "f", "m.py::f", "k", bug)
    test = "tests/test_m.py::test_f"
    text = gen.issue_text(cand, [test], {test: "AssertionError: return x - 1 gave 0"}, random.Random(0))
    assert "return x - 1" not in text and f"`{test}` fails" in text
    text = gen.issue_text(cand, [test], {test: "assert 0 == 2"}, random.Random(0))
    assert "assert 0 == 2" in text
    quoting = cand.__class__(**{**cand.__dict__, "bug_patch": bug.replace("+    return x - 1", "+    fails")})
    assert gen.issue_text(quoting, [test], {}, random.Random(0)) is None  # "`...` fails" would quote it


def test_bad_input_is_named(tmp_path):
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        gen.load_generated("dev")
    with pytest.raises(DatasetError, match="does not exist"):
        gen.load_generated("train", folder=tmp_path)
    row = _committed_rows("train")[0]
    (tmp_path / "train.jsonl").write_text(json.dumps({**row, "snapshot": "0" * 40}) + "\n")
    with pytest.raises(DatasetError, match="run `swe-aem generate` again"):
        gen.load_generated("train", folder=tmp_path)


def test_candidates_regenerate_the_committed_bugs():
    """Same seed, same snapshot: every committed textkit bug is among the candidates again."""
    repo = "swe-aem/textkit"
    committed = {r["instance_id"]: r for split in gen.SPLITS for r in _committed_rows(split) if r["repo"] == repo}
    assert committed
    fresh = {c.instance_id: c for c in gen.candidates(json.loads((gen.GENERATED / "stats.json").read_text())["seed"],
                                                      [repo])}
    for iid, row in committed.items():
        cand = fresh[iid]
        assert (cand.bug_patch, cand.kind, cand.unit, cand.function) == (
            row["bug_patch"], row["bug_kind"], row["unit"], row["function"])


# ---------------------------------------------------------------- real containers

@pytest.fixture(scope="module")
def repo_images(docker_client) -> None:
    """The per-repo images (a no-op when their content-hash tags exist)."""
    from swe_aem.sandbox.image_store import build_base

    build_base(docker_client)
    gen.build_images(docker_client)


def _pick(splits: dict[str, list[Instance]]) -> list[Instance]:
    """One train instance of each of two repos and one test instance (a handful, not all)."""
    seen: dict[str, Instance] = {}
    for inst in splits["train"]:
        seen.setdefault(inst.repo, inst)
    return sorted(seen.values(), key=lambda i: i.repo)[:2] + splits["test"][:1]


@pytest.mark.slow
@pytest.mark.docker
def test_gold_resolves_and_buggy_tree_fails(splits, repo_images):
    from swe_aem.reward.grading import grade_patch
    from swe_aem.sandbox import SandboxPool
    from swe_aem.sandbox.setup_script import prepare

    picked = _pick(splits)
    with SandboxPool(max_concurrency=1, run_id="test-generate") as pool:
        for inst in picked:
            result = grade_patch(inst, inst.patch, pool=pool)
            assert result.resolved, (inst.instance_id, result.status, result.reason)
        inst = picked[0]
        with pool.sandbox(inst) as sandbox:
            prepare(sandbox, inst)
            head = sandbox.exec("git rev-parse HEAD && git rev-list --count HEAD", workdir="/testbed")
            assert head.output.split() == [inst.base_commit, "1"]  # no history to read the fix from
            assert sandbox.diff() == ""
            sandbox.write_file("/tmp/eval.sh", inst.eval_script)
            statuses = gen.test_statuses(sandbox.exec("/bin/bash /tmp/eval.sh").output)
    assert all(statuses.get(t) != "PASSED" for t in inst.FAIL_TO_PASS)
    assert all(statuses.get(t) == "PASSED" for t in inst.PASS_TO_PASS)


@pytest.mark.slow
@pytest.mark.docker
def test_regenerating_a_few_reproduces_the_committed_rows(repo_images):
    seed = json.loads((gen.GENERATED / "stats.json").read_text())["seed"]
    repo = "swe-aem/textkit"
    committed = sorted((r for s in gen.SPLITS for r in _committed_rows(s) if r["repo"] == repo),
                       key=lambda r: r["instance_id"])[:3]
    fresh = {c.instance_id: c for c in gen.candidates(seed, [repo])}
    cands = [fresh[r["instance_id"]] for r in committed]
    clean, outcomes = gen.validate_repo(gen.repo_image(repo), cands)
    for cand, row in zip(cands, committed, strict=True):
        f2p, p2p = gen.classify(clean, outcomes[cand.instance_id])
        assert gen.make_row(cand, f2p, p2p, outcomes[cand.instance_id].messages, seed) == row


def _changed_lines(patch: str) -> list[int]:
    """Lines of the current file a one-file patch removes, or inserts after (not its context)."""
    out, old = [], 0
    for text in patch.splitlines():
        if text.startswith("@@"):
            old = int(text.split()[1].lstrip("-").split(",")[0]) - 1
        elif text.startswith("-") and not text.startswith("---"):
            old += 1
            out.append(old)
        elif text.startswith("+") and not text.startswith("+++"):
            out.append(max(old, 1))
        elif text.startswith(" "):
            old += 1
    return out


@pytest.mark.slow
@pytest.mark.docker
def test_demonstrations_locate_the_function_from_the_failing_test(splits, repo_images, tmp_path):
    """The warm start's demonstrations of generated tasks, run in real containers with the
    tiny model's tokenizer: the failing test's output, the `def` grep found, a view from
    that line that covers the lines the gold patch changes, the edit, and a resolved grade."""
    from swe_aem.agent.trajectory import read_episodes
    from swe_aem.sft.demos import make_demonstrations

    picked = _pick(splits)
    report = make_demonstrations(picked, "tiny", tmp_path / "demos.jsonl", progress=False)
    assert report.kept == len(picked), (report.rejected, report.dropped)
    for ep in read_episodes(tmp_path / "demos.jsonl"):
        inst = next(i for i in picked if i.instance_id == ep.instance_id)
        run, grep, view = ep.turns[:3]
        # `-qq`: pytest's short summary names the failing test; no timing line ("1 failed in 0.1s")
        assert "FAILED" in run.observation and inst.FAIL_TO_PASS[0].split("[")[0] in run.observation
        assert not re.search(r"\bin \d+\.\d+s\b", run.observation), run.observation[-300:]
        line = int(grep.observation.split(f"{inst.extra['file']}:")[1].split(":")[0])
        first, last = view.tool_call.arguments["view_range"]
        assert view.tool_error is None and f"{first}\t" in view.observation  # the view showed the code
        changed = _changed_lines(inst.patch)
        assert first == line and first <= min(changed) and max(changed) <= last, (first, last, changed)
        assert [t.tool_call.name for t in ep.turns[3:]][-1] == "finish"
        assert ep.reward == 1.0

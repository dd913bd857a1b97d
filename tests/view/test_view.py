"""The run viewer (issue 32) in a real headless Chromium (Debian's, driven by Playwright through
its executable path; .ci/run installs it), over a run folder this module trains: the real
trainer (DeepSpeed on the small random Llama), real containers and grading, a stand-in policy
at the HTTP boundary whose samples mix reward 1 and 0 (test_train_async's SeededPlans), AEM on
with no entropy floor, so its alphas differ from 1.

What the page shows is checked against the run's own records: trajectories/step-N.jsonl,
credit/step-N.jsonl (every trained turn's entropy, alpha, advantages) and the grading per test.

Two runs (`swe-aem view RUN_A RUN_B`): two `swe-aem eval` reports on three tasks of the local
suite (real containers and grading, a scripted stand-in policy that solves a known two of the
three in each), compared per task against their eval.json and against what `swe-aem compare`
writes for the same files; and two training runs (this module's and one more at another
learning rate), their curves overlaid.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path

import pytest
from test_train_async import INSTANCE, SAMPLES, SeededPlans, config
from transformers import AutoTokenizer

from swe_aem.cli import main
from swe_aem.commands.view import comparison
from swe_aem.jsonl import scan_jsonl
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch
from swe_aem.train import loop
from swe_aem.view.run_folder import RunSource, group_stats
from swe_aem.view.site import Site, make_server

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"  # kept after the run


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: .ci/run installs Debian's (apt install chromium)")
    return path


@pytest.fixture(scope="module")
def run(local_instances, small_model, tmp_path_factory) -> Path:
    """Two synchronous RLOO + AEM steps of 4 samples on one task, as `swe-aem train` runs them,
    each token's entropy recorded (run.record_token_entropy)."""
    inst = next(i for i in local_instances if i.instance_id == INSTANCE)
    folder = tmp_path_factory.mktemp("view") / "run"
    with SeededPlans(AutoTokenizer.from_pretrained(small_model), inst) as policy:
        loop.Trainer(config(small_model, policy.base_url, "run.steps=2", "run.record_token_entropy=true"),
                     folder).train()
    return folder


# two evaluations of three tasks: A solves the first two, B the last two (one win, one loss of B)
EVAL_TASKS = ["swe-aem__pyledger-3", "swe-aem__textkit-1", "swe-aem__textkit-3"]
SOLVED = {"a": set(EVAL_TASKS[:2]), "b": set(EVAL_TASKS[1:])}
GIVE_UP = "<function=finish>\n</function>"


@pytest.fixture(scope="module")
def run_b(local_instances, small_model, tmp_path_factory) -> Path:
    """A second training run like `run`, at another learning rate (its curves part from A's)."""
    inst = next(i for i in local_instances if i.instance_id == INSTANCE)
    folder = tmp_path_factory.mktemp("view") / "run-b"
    with SeededPlans(AutoTokenizer.from_pretrained(small_model), inst) as policy:
        loop.Trainer(config(small_model, policy.base_url, "run.steps=2", "trainer.lr=3e-4",
                                    "run.save_every=2"), folder).train()
    return folder


@pytest.fixture(scope="module")
def evals(local_instances, tmp_path_factory) -> dict[str, Path]:
    """Two `swe-aem eval` report folders (one run each) of EVAL_TASKS: a scripted policy makes
    the gold edits on the tasks SOLVED names and gives up at once on the others."""
    tokenizer = AutoTokenizer.from_pretrained(load_preset("tiny").default_path)
    by_id = {i.instance_id: i for i in local_instances if i.instance_id in EVAL_TASKS}
    root = tmp_path_factory.mktemp("view-evals")
    for name, solved in SOLVED.items():
        gold = {t: editor_calls_for_patch(by_id[t].patch) + [GIVE_UP] for t in solved}

        def respond(prompt: str, turn: int, gold=gold) -> str:
            calls = next((c for t, c in gold.items() if by_id[t].problem_statement.strip() in prompt), [GIVE_UP])
            return calls[min(turn, len(calls) - 1)]

        with ScriptedPolicyServer(tokenizer, respond) as server:
            assert main(["eval", "--model", "tiny", "--dataset", "local", "--instances", *EVAL_TASKS,
                         "--server-url", server.base_url, "--runs", "1", "--max-turns", "6",
                         "--concurrency", "3", "--temperature", "0", "--out", str(root / name)]) == 0
    return {name: root / name for name in SOLVED}


@pytest.fixture
def browser():
    """Per test: Playwright's sync API holds an event loop in this thread while it is open, and
    a module fixture set up under it (an evaluation, a training run: asyncio.run) would fail."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def _page(browser, seen: list[str]):
    """A page that records every URL it requests (none may leave this machine)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda req: seen.append(req.url))
    return page


def _credit(run: Path, step: int) -> list[dict]:
    return [ln.row for ln in scan_jsonl(run / "credit" / f"step-{step:06d}.jsonl")]


def _episodes(run: Path, step: int) -> list[dict]:
    return [ln.row for ln in scan_jsonl(run / "trajectories" / f"step-{step:06d}.jsonl")]


def test_the_run_records_what_the_viewer_shows(run):
    """Rank 0's credit record holds one row per trained turn, AEM's alphas among them not all 1
    (the group's samples differ in entropy; no floor); the episodes keep the grading per test."""
    for step in (0, 1):
        episodes, credit = _episodes(run, step), _credit(run, step)
        assert sorted(e["sample_index"] for e in episodes) == list(range(SAMPLES))
        assert len(credit) == sum(len(e["turns"]) for e in episodes)
        assert {(r["task"], r["sample"], r["turn"]) for r in credit} == {
            (e["instance_id"], e["sample_index"], k) for e in episodes for k in range(len(e["turns"]))}
        assert any(abs(r["alpha"] - 1.0) > 1e-6 for r in credit)
        for r in credit:  # AEM scales the advantage by alpha (turn level, no masking here)
            assert r["advantage_aem"] == pytest.approx(r["alpha"] * r["advantage"], rel=1e-5, abs=1e-7)
        solved = [e for e in episodes if e["reward"] == 1.0]
        assert solved and all(set(e["grade_tests"]["FAIL_TO_PASS"].values()) == {"pass"} for e in solved)


def test_the_page_from_files_shows_the_runs_episodes_turns_and_alphas(run, browser, tmp_path):
    out = tmp_path / "page"
    assert main(["view", str(run), "--out", str(out)]) == 0
    seen: list[str] = []
    page = _page(browser, seen)
    index = (out / "index.html").resolve().as_uri()

    # the run: its curves
    page.goto(index + "#/0/run")
    page.wait_for_selector("[data-chart='AEM alpha range']")

    # step 1's table: every episode of the step, once
    episodes = _episodes(run, 1)
    page.goto(index + "#/0/set/s000001")
    page.wait_for_selector("#episodes tr.ep")
    rows = page.query_selector_all("#episodes tr.ep")
    assert sorted((r.get_attribute("data-task"), int(r.get_attribute("data-sample"))) for r in rows) == sorted(
        (e["instance_id"], e["sample_index"]) for e in episodes)

    # one episode (a click on its row): its turns, their tool calls, and the alpha of each as
    # the credit record says
    row = rows[0]
    sample = int(row.get_attribute("data-sample"))
    row.query_selector("td[data-col='reward']").click()
    page.wait_for_selector(".card.turn")
    shown = page.query_selector_all(".card.turn")
    ep = next(e for e in episodes if e["sample_index"] == sample)
    assert len(shown) == len(ep["turns"])
    assert [c.get_attribute("data-tool") for c in shown] == [
        (t.get("tool_call") or {}).get("name", "") for t in ep["turns"]]
    credit = sorted((r for r in _credit(run, 1) if r["sample"] == sample), key=lambda r: r["turn"])
    assert [float(c.get_attribute("data-alpha")) for c in shown] == [r["alpha"] for r in credit]
    # each turn's token entropies as a heat strip along its response, the hottest token in
    # the hottest colour, under a legend with the episode's range
    strips = [c.query_selector("canvas.tokens") for c in shown]
    assert [int(x.get_attribute("data-tokens")) for x in strips] == [len(r["token_entropy"]) for r in credit]
    assert all(x.is_visible() for x in strips)
    values = [v for r in credit for v in r["token_entropy"]]
    legend = page.query_selector("#token-legend")
    assert [float(legend.get_attribute(a)) for a in ("data-lo", "data-hi")] == [min(values), max(values)]
    hot = next((k, r["token_entropy"].index(max(values))) for k, r in enumerate(credit) if max(values) in r["token_entropy"])
    assert strips[hot[0]].evaluate("(c, i) => Array.from(c.getContext('2d').getImageData(i, 0, 1, 1).data)",
                                   hot[1]) == [232, 89, 12, 255]  # one column a token (turns under 1500)
    if ep["reward"] == 1.0:
        assert "pass" in page.inner_text("table")  # the grading per test
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-episode.png"), full_page=False)
    episode_route = page.url.split("#", 1)[1]

    # an older record (no token_entropy): the same episode, its alphas, no strip or legend
    old = tmp_path / "old-run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("checkpoints", "final_model"))
    for path in (old / "credit").glob("step-*.jsonl"):
        rows_ = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "token_entropy"}) + "\n"
                                for r in rows_))
    assert main(["view", str(old), "--out", str(tmp_path / "old-page")]) == 0
    page.goto((tmp_path / "old-page" / "index.html").resolve().as_uri() + "#" + episode_route)
    page.wait_for_selector(".card.turn")
    assert [float(c.get_attribute("data-alpha")) for c in page.query_selector_all(".card.turn")] == [
        r["alpha"] for r in credit]
    assert not page.query_selector_all("canvas.tokens") and page.query_selector("#token-legend") is None

    # the task's group: its entropy range against AEM's floor, as the credit rows give them
    page.goto(index + "#/0/group/s000001/0")
    banner = page.wait_for_selector("#range")
    want = group_stats(_credit(run, 1), min_range=0.0)[INSTANCE]
    assert float(banner.get_attribute("data-range")) == pytest.approx(want["range"], rel=1e-12)
    assert float(banner.get_attribute("data-floor")) == 0.0
    assert banner.get_attribute("data-active") == "true" and "AEM active" in banner.inner_text()
    assert len(page.query_selector_all(".card.sample")) == SAMPLES
    page.close()
    assert seen and all(u.startswith("file://") for u in seen), [u for u in seen if not u.startswith("file://")]


def test_the_served_page_refreshes_and_shows_a_bad_line_as_such(run, browser, tmp_path):
    """Served (`swe-aem view RUN --port`): a line appended to a step's trajectories while the
    page is open appears as a bad line of the table, and the rest stays."""
    live = tmp_path / "live"
    shutil.copytree(run, live)
    server = make_server(Site([RunSource(live)], live=True), "127.0.0.1", 0, refresh_s=0.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen: list[str] = []
    try:
        page = _page(browser, seen)
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/#/0/set/s000000")
        page.wait_for_selector("#episodes tr.ep")
        with (live / "trajectories" / "step-000000.jsonl").open("a") as fh:
            fh.write('{"instance_id": "cut-short", "turns": [\n')  # a malformed line
        bad = page.wait_for_selector("#episodes tr.bad", timeout=15_000)
        assert "not valid JSON" in bad.inner_text()
        assert len(page.query_selector_all("#episodes tr.ep")) == SAMPLES
        page.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen and all(u.startswith("http://127.0.0.1:") for u in seen), seen


def test_two_evaluations_side_by_side_per_task_with_the_paired_statistics_of_compare(evals, browser, tmp_path):
    """`swe-aem view A B` over two eval reports: each task once, resolved in A and in B as the
    reports' eval.json say, and the paired statistics equal to `swe-aem compare`'s record."""
    files = {name: folder / "eval.json" for name, folder in evals.items()}
    runs = {name: json.loads(f.read_text())["runs"] for name, f in files.items()}
    assert runs == {name: [{t: t in SOLVED[name] for t in EVAL_TASKS}] for name in SOLVED}  # graded as planned
    assert main(["compare", str(files["a"]), str(files["b"]), "--out", str(tmp_path / "compare")]) == 0
    want = json.loads((tmp_path / "compare" / "compare.json").read_text())

    out = tmp_path / "page"
    assert main(["view", str(evals["a"]), str(evals["b"]), "--out", str(out)]) == 0
    seen: list[str] = []
    page = _page(browser, seen)
    page.goto((out / "index.html").resolve().as_uri() + "#/compare")
    page.wait_for_selector("#per-task tr[data-task]")
    rows = page.query_selector_all("#per-task tr[data-task]")
    tasks = [r.get_attribute("data-task") for r in rows]
    assert tasks == sorted(EVAL_TASKS)  # each task once
    assert {r.get_attribute("data-task"): (json.loads(r.get_attribute("data-a")), json.loads(r.get_attribute("data-b")))
            for r in rows} == {t: (float(runs["a"][0][t]), float(runs["b"][0][t])) for t in EVAL_TASKS}
    stats = {r.get_attribute("data-stat"): json.loads(r.get_attribute("data-value"))
             for r in page.query_selector_all("#paired tr[data-stat]")}
    assert stats.pop("runs") == [want["runs_a"], want["runs_b"]]
    assert stats == {k: want[k] for k in stats}
    assert set(stats) == {"n_instances", "rate_a", "rate_b", "diff", "diff_ci", "mcnemar_p", "wins", "losses"}
    assert stats["wins"] == ["swe-aem__textkit-3"] and stats["losses"] == ["swe-aem__pyledger-3"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-compare.png"), full_page=True)

    # a task's link opens that run's episodes, filtered to the task
    rows[-1].query_selector("td:nth-child(3) a").click()
    page.wait_for_selector("#episodes tr.ep")
    assert [r.get_attribute("data-task") for r in page.query_selector_all("#episodes tr.ep")] == [EVAL_TASKS[-1]]
    assert page.url.endswith("#/1/set/all")
    page.close()
    assert seen and all(u.startswith("file://") for u in seen), [u for u in seen if not u.startswith("file://")]


def test_what_cannot_be_compared_is_said_on_the_page_not_raised(evals, tmp_path):
    """A rollout output (episodes, no graded evaluation) or an unreadable eval.json as B: the
    comparison names what is missing instead of failing the page."""
    rollout = tmp_path / "rollout"
    rollout.mkdir()
    shutil.copy(evals["b"] / "trajectories.jsonl", rollout / "trajectories.jsonl")
    got = comparison(RunSource(evals["a"]), RunSource(rollout))
    assert "no graded evaluation to compare in B" in got["error"] and "tasks" not in got
    broken = tmp_path / "broken"
    shutil.copytree(evals["b"], broken)
    (broken / "eval.json").write_text('{"runs": [{"swe-aem__textkit-1": "maybe"}]}')
    got = comparison(RunSource(evals["a"]), RunSource(broken))
    assert got["error"].startswith("cannot read the graded runs") and "paired" not in got


def _finite_points(folder: Path) -> dict[str, int]:
    """Per metric of a training run, how many steps logged it as a finite number (last row of
    a step counts, as the page reads metrics.jsonl)."""
    rows = {r["step"]: r for ln in scan_jsonl(folder / "metrics.jsonl")
            if (r := ln.row).get("kind", "train") == "train"}
    keys = {k for r in rows.values() for k in r}
    return {k: sum(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for r in rows.values()) for k in keys}


def test_two_training_runs_have_their_curves_overlaid(run, run_b, browser, tmp_path):
    """`swe-aem view RUN RUN_B` over two training runs: every chart of the comparison draws
    both runs (B dashed), each series with the steps its run logged."""
    out = tmp_path / "page"
    assert main(["view", str(run), str(run_b), "--out", str(out)]) == 0
    seen: list[str] = []
    page = _page(browser, seen)
    index = (out / "index.html").resolve().as_uri()
    page.goto(index + "#/compare")
    page.wait_for_selector("[data-chart='policy loss']")
    points = {"A": _finite_points(run), "B": _finite_points(run_b)}
    charts = page.query_selector_all("[data-chart]")
    assert len(charts) > 5
    for chart in charts:
        series = [(s.get_attribute("data-run"), s.get_attribute("data-key"), int(s.get_attribute("data-points")))
                  for s in chart.query_selector_all(".legend span")]
        keys = {k for _, k, _ in series}
        assert sorted(r for r, _, _ in series) == ["A"] * len(keys) + ["B"] * len(keys), chart.get_attribute("data-chart")
        assert all(n == points[r][k] for r, k, n in series), (chart.get_attribute("data-chart"), series)
        drawn = sum(n > 1 for _, _, n in series)  # a line per series of two points or more
        assert len(chart.query_selector_all("polyline")) == drawn
        assert len(chart.query_selector_all("polyline[stroke-dasharray='4 3']")) == sum(
            n > 1 for r, _, n in series if r == "B")
    loss = [s.get_attribute("data-run") for s in page.query_selector_all("[data-chart='policy loss'] .legend span")]
    assert loss == ["A", "B"] and points["A"]["loss"] == points["B"]["loss"] == 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-curves-overlaid.png"), full_page=False)

    # each run's own page overlays the other too, named by its folder
    page.goto(index + "#/0/run")
    page.wait_for_selector("[data-chart='policy loss']")
    assert [s.get_attribute("data-run") for s in page.query_selector_all("[data-chart='policy loss'] .legend span")] == [
        run.name, run_b.name]
    page.close()
    assert seen and all(u.startswith("file://") for u in seen), [u for u in seen if not u.startswith("file://")]


def test_a_tolerant_scan_names_bad_and_half_written_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + "{oops\n" + "\n" + json.dumps({"b": 2}) + "\n" + '{"c": ')
    lines = list(scan_jsonl(path))
    assert [(ln.line, ln.row) for ln in lines if ln.error is None] == [(1, {"a": 1}), (4, {"b": 2})]
    assert "t.jsonl:2: not valid JSON" in lines[1].error
    assert lines[-1].error == "half-written line (no newline yet)" and lines[-1].line == 5
    # a scan resumed at the half-written line's offset reads it once it is finished
    with path.open("a") as fh:
        fh.write("3}\n")
    [again] = scan_jsonl(path, lines[-1].offset, lines[-1].line)
    assert again.row == {"c": 3} and again.line == 5

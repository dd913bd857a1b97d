"""The small-scale evidence: the game's rules, the policy's scoring, the summaries, and a
quick end-to-end run through the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from swe_aem.cli import main
from swe_aem.evidence.arm import RunConfig, train_run
from swe_aem.evidence.game import GameConfig, GRUPolicy
from swe_aem.evidence.run import quick_config, steps_to_threshold, summarize_arm, theory_check

GAME = GameConfig(n_targets=7, base=3, digits=2, turns=3)


def test_game_rules_hold_for_played_episodes() -> None:
    torch.manual_seed(0)
    policy = GRUPolicy(GAME, hidden=16)
    targets = torch.arange(GAME.n_targets).repeat(40)
    ep = policy.play(targets, torch.Generator().manual_seed(0))
    for b in range(targets.shape[0]):
        hit, obs_expected = False, GAME.start
        for t in range(GAME.turns):
            col = t * GAME.turn_len
            assert bool(ep.turn_active[b, t]) == (not hit)
            if hit:
                continue
            assert int(ep.tokens[b, col]) == obs_expected
            d = ep.tokens[b, col + 1 : col + 1 + GAME.digits].tolist()
            guess = d[0] * GAME.base + d[1]
            hit = guess == int(targets[b])
            obs_expected = GAME.higher if guess < int(targets[b]) else GAME.lower
        assert float(ep.reward[b]) == float(hit)
    assert 0 < float(ep.reward.mean()) < 1  # a random policy sometimes wins, sometimes not


def test_score_of_a_uniform_policy() -> None:
    policy = GRUPolicy(GAME, hidden=8)
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.zero_()
    ep = policy.play(torch.tensor([0, 3, 6]), torch.Generator().manual_seed(1))
    logp, ent, mask = policy.score(ep)
    assert logp.shape == ent.shape == mask.shape == (3, GAME.turns * GAME.digits)
    assert torch.allclose(logp, torch.full_like(logp, -math.log(GAME.base)))
    assert torch.allclose(ent, torch.full_like(ent, math.log(GAME.base)))
    assert torch.equal(mask, ep.turn_active.repeat_interleave(GAME.digits, dim=1))
    assert logp.requires_grad and not ent.requires_grad


def test_game_config_rejects_unwritable_targets() -> None:
    with pytest.raises(ValueError, match="cannot write 9"):
        GameConfig(n_targets=10, base=3, digits=2)


def test_runs_are_deterministic_and_arms_share_the_first_batch() -> None:
    cfg = RunConfig(game=GAME, steps=5, tasks=4, group=4, hidden=16)
    a, b = train_run(cfg, 3, 0.0), train_run(cfg, 3, 0.0)
    assert [asdict(s) for s in a] == [asdict(s) for s in b]
    aem = train_run(cfg, 3, 1.0)
    # same seed: same weights, targets and sampler, so the first rollout is identical
    assert aem[0].success == a[0].success and aem[0].entropy == a[0].entropy
    assert aem[0].drift_base == pytest.approx(a[0].drift_base)
    # the probes do not depend on the arm: same batch, same weights, same two advantage sets
    assert aem[0].probe_change_plain == pytest.approx(a[0].probe_change_plain)
    assert aem[0].probe_change_aem == pytest.approx(a[0].probe_change_aem)
    assert a[0].drift_pred == a[0].drift_base and aem[0].drift_pred == pytest.approx(aem[0].drift_aem)
    assert all(s.alpha_max == 1.0 for s in a) and any(s.alpha_max > 1.0 for s in aem)


def test_steps_to_threshold_and_summary() -> None:
    s = np.array([0, 0, 1, 1, 1, 0, 1, 1], dtype=float)
    assert steps_to_threshold(s, 0.5, 2) == 3  # mean of steps 2-3 = 0.5
    assert steps_to_threshold(s, 1.0, 3) == 5  # steps 3-5
    assert steps_to_threshold(s, 0.9, 4) is None
    cfg = quick_config()
    runs = {seed: [{"success": v, "entropy": 1.0 - v} for v in np.linspace(0, 1, 100) * f]
            for seed, f in ((0, 1.0), (1, 0.4))}
    summ = summarize_arm(runs, cfg)
    assert summ["final_success_per_seed"] == pytest.approx([np.linspace(0, 1, 100)[-10:].mean(),
                                                            0.4 * np.linspace(0, 1, 100)[-10:].mean()])
    assert summ["seeds_reaching_threshold"] == 1 and summ["steps_to_threshold_per_seed"][1] is None


def test_theory_check_recovers_linear_relations() -> None:
    rng = np.random.default_rng(0)
    runs = {}
    for seed in range(3):
        rows = []
        for p, q in rng.normal(size=(50, 2)):
            neg = p > 0  # "negatives dominate" exactly where the plain drift is positive
            rows.append({"drift_pred": p, "entropy_change": 2 * p + 1,
                         "drift_base": p, "probe_change_plain": -p,
                         "drift_aem": p + q, "probe_change_aem": -p + 3 * q,
                         "frac_neg_adv": 0.6 if neg else 0.2, "frac_pos_adv": 0.4})
        runs[seed] = rows
    th = theory_check(runs)
    assert th["adam_step"]["pearson_r"] == pytest.approx(1.0) and th["adam_step"]["n"] == 150
    assert th["sgd_probe_plain"]["pearson_r"] == pytest.approx(-1.0)
    assert th["sgd_probe_plain"]["sign_agreement"] == 0.0
    # AEM effect: measured (3q) against predicted (q), perfectly related
    assert th["aem_effect"]["pearson_r"] == pytest.approx(1.0) and th["aem_effect"]["sign_agreement"] == 1.0
    neg = th["phases"]["negatives_dominate"]
    all_p = np.array([r["drift_base"] for rows in runs.values() for r in rows])
    assert neg["steps"] == int((all_p > 0).sum())
    assert neg["mean_adam_step"] == pytest.approx(2 * all_p[all_p > 0].mean() + 1)
    assert neg["mean_aem_effect_measured"] == pytest.approx(3 * neg["mean_aem_effect_predicted"])


def test_evidence_quick_cli(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert main(["evidence", "--quick", "--out", str(out), "--workers", "2"]) == 0
    rec = json.loads((out / "evidence.json").read_text())
    cfg = quick_config()
    for arm in ("grpo", "grpo+aem"):
        assert sorted(rec["steps"][arm]) == ["0", "1", "2"]
        assert all(len(v) == cfg.run.steps for v in rec["steps"][arm].values())
        assert 0.0 <= rec["summary"][arm]["final_success_mean"] <= 1.0
    finals = {arm: rec["summary"][arm]["final_success_per_seed"] for arm in ("grpo", "grpo+aem")}
    assert rec["paired_final_diff"]["per_seed"] == pytest.approx(np.subtract(finals["grpo+aem"], finals["grpo"]))
    for seed in ("0", "1", "2"):
        assert rec["steps"]["grpo"][seed][0]["success"] == rec["steps"]["grpo+aem"][seed][0]["success"]
    # learning happened in the plain arm: late success above the first steps'
    grpo = np.array([[s["success"] for s in v] for v in rec["steps"]["grpo"].values()])
    assert grpo[:, -30:].mean() > grpo[:, :30].mean() + 0.1
    assert "trained from scratch" in (out / "evidence.md").read_text()
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "theory.png").stat().st_size > 5_000
    assert main(["evidence", "--quick", "--seeds", "2", "--out", str(out)]) == 2

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
from swe_aem.eval.evidence.game import GameConfig, GRUPolicy
from swe_aem.eval.evidence.run import quick_config, steps_to_threshold, summarize_arm, theory_check
from swe_aem.eval.evidence.train import RunConfig, train_run

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


def test_theory_check_recovers_a_linear_relation() -> None:
    rng = np.random.default_rng(0)
    runs = {}
    for seed in range(3):
        pred = rng.normal(size=50)
        runs[seed] = [{"drift_pred": p, "drift_base": -p, "entropy_change": 2 * p,
                       "entropy_change_sgd": -p, "frac_neg_adv": 0.6 if p < 0 else 0.2,
                       "frac_pos_adv": 0.4} for p in pred]
    th = theory_check(runs)
    assert th["adam_step"]["predicted"]["pearson_r"] == pytest.approx(1.0)
    assert th["adam_step"]["predicted_base"]["pearson_r"] == pytest.approx(-1.0)
    assert th["sgd_probe"]["predicted"]["pearson_r"] == pytest.approx(-1.0)
    assert th["adam_step"]["sign_agreement"] == 1.0 and th["sgd_probe"]["sign_agreement"] == 0.0
    neg = th["phases"]["negatives_dominate"]
    assert neg["steps"] == sum(s["drift_pred"] < 0 for r in runs.values() for s in r)
    assert neg["mean_predicted"] < 0 and neg["mean_adam_step"] == pytest.approx(2 * neg["mean_predicted"])


def test_evidence_quick_cli(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    assert main(["evidence", "--quick", "--out", str(out), "--workers", "2"]) == 0
    rec = json.loads((out / "evidence.json").read_text())
    cfg = quick_config()
    for arm in ("grpo", "grpo+aem"):
        assert sorted(rec["steps"][arm]) == ["0", "1", "2"]
        assert all(len(v) == cfg.run.steps for v in rec["steps"][arm].values())
        assert 0.0 <= rec["summary"][arm]["final_success_mean"] <= 1.0
    for seed in ("0", "1", "2"):
        assert rec["steps"]["grpo"][seed][0]["success"] == rec["steps"]["grpo+aem"][seed][0]["success"]
    # learning happened in the plain arm: late success above the first steps'
    grpo = np.array([[s["success"] for s in v] for v in rec["steps"]["grpo"].values()])
    assert grpo[:, -30:].mean() > grpo[:, :30].mean() + 0.1
    assert "trained from scratch" in (out / "evidence.md").read_text()
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "theory.png").stat().st_size > 5_000
    assert main(["evidence", "--quick", "--seeds", "2", "--out", str(out)]) == 2

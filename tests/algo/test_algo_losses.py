"""Policy losses chosen by name (issue 9): the registry, reinforce and GSPO by hand."""

import math

import pytest
import torch

from swe_aem.algo.losses import (
    POLICY_LOSSES,
    PolicyLossConfig,
    get_policy_loss,
    gspo_loss,
    ppo_clip_loss,
    register_policy_loss,
    reinforce_loss,
)
from swe_aem.config import ConfigError, load_config


def test_registry_names_and_errors():
    assert {"ppo_clip", "reinforce", "gspo"} <= set(POLICY_LOSSES)
    assert get_policy_loss("ppo_clip") is ppo_clip_loss
    with pytest.raises(KeyError, match="unknown policy loss 'ppo'.*gspo.*ppo_clip"):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match="twice"):
        register_policy_loss("gspo")(gspo_loss)


def test_config_picks_and_validates_the_loss():
    assert load_config().algo.policy_loss == "ppo_clip"
    assert load_config(overrides=["algo.policy_loss=gspo"]).algo.policy_loss == "gspo"
    with pytest.raises(ConfigError, match="algo.policy_loss 'ppo'.*reinforce"):
        load_config(overrides=["algo.policy_loss=ppo"])


def test_reinforce_never_clips():
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, agg="token-mean")
    new = torch.log(torch.tensor([[2.0, 0.5, 1.1, 0.9]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = reinforce_loss(new, torch.zeros(1, 4), adv, torch.ones(1, 4), cfg)
    assert loss.item() == pytest.approx((-2.0 + 0.5 - 1.1 + 0.9) / 4, abs=1e-6)
    assert stats["clip_frac"].item() == 0.0
    loss.backward()
    # d/dlogp of -A * exp(logp - old) / 4 = -A * ratio / 4, on every token (PPO-clip zeroes two)
    torch.testing.assert_close(new.grad, torch.tensor([[-0.5, 0.125, -0.275, 0.225]]))


def test_gspo_clips_whole_sequences_by_hand():
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, agg="seq-mean-token-mean")
    # row 0: token ratios 2 and 0.5 -> sequence ratio sqrt(2 * 0.5) = 1 (inside the clip range);
    #        its third token is masked and must not enter the sequence ratio
    # row 1: ratio 1.5 everywhere, A < 0: the pessimistic side is unclipped, gradient kept
    # row 2: ratio 1.5 everywhere, A > 0: clipped at 1.28, no gradient
    new = torch.log(torch.tensor([[2.0, 0.5, 9.0], [1.5, 1.5, 1.5], [1.5, 1.5, 1.5]])).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    loss, stats = gspo_loss(new, torch.zeros(3, 3), adv, mask, cfg)
    assert loss.item() == pytest.approx((-1.0 + 1.5 - 1.28) / 3, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(3 / 8)
    assert stats["ratio_mean"].item() == pytest.approx((2 * 1.0 + 6 * 1.5) / 8, abs=1e-6)
    loss.backward()
    # token grad = -A * s / (tokens of its row) / (rows)
    expected = torch.tensor([[-1 / 6, -1 / 6, 0.0], [1.5 / 9, 1.5 / 9, 1.5 / 9], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(new.grad, expected)
    # PPO-clip on row 0 instead clips the ratio-2 token alone
    ppo, ppo_stats = ppo_clip_loss(new.detach()[:1], torch.zeros(1, 3), adv[:1], mask[:1], cfg)
    assert ppo.item() == pytest.approx(-(1.28 + 0.5) / 2, abs=1e-6)
    assert ppo_stats["clip_frac"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["ppo_clip", "reinforce", "gspo"])
def test_on_policy_gradient_is_the_policy_gradient(name):
    """At ratio 1 every loss has gradient -A / normaliser on each sampled token."""
    torch.manual_seed(1)
    lp = torch.randn(3, 5, requires_grad=True)
    adv = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    cfg = PolicyLossConfig(agg="token-mean", name=name)
    loss, stats = get_policy_loss(name)(lp, lp.detach(), adv, mask, cfg)
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv * mask / mask.sum())
    assert stats["clip_frac"].item() == 0.0 and stats["ratio_mean"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_masked_tokens_contribute_nothing_to_any_loss(name):
    torch.manual_seed(0)
    lp = torch.randn(2, 6, requires_grad=True)
    old, adv, ref, roll = (torch.randn(2, 6) for _ in range(4))
    mask = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0]])
    cfg = PolicyLossConfig(agg="seq-mean-token-mean", kl_coef=0.1, tis_cap=2.0, name=name)
    fn = get_policy_loss(name)
    loss, _ = fn(lp, old, adv, mask, cfg, ref_logprobs=ref, rollout_logprobs=roll)
    loss.backward()
    assert (lp.grad[mask == 0] == 0).all() and (lp.grad[mask == 1] != 0).all()
    lp2 = lp.detach().clone()
    lp2[mask == 0] = 1e3  # garbage where nothing was sampled
    loss2, _ = fn(lp2, old, adv, mask, cfg, ref_logprobs=ref, rollout_logprobs=roll)
    assert math.isfinite(loss2.item()) and loss2.item() == pytest.approx(loss.item())


# ---- issue 28: dual-clip, rollout/trainer weights and masks, per-turn GSPO (hand-computed)

def _log(*values: float) -> torch.Tensor:
    return torch.log(torch.tensor([list(values)]))


def test_dual_clip_bounds_a_negative_advantage_at_ratio_10():
    """Tokens: A=-1 at ratio 10, A=-1 at ratio 2, A=+1 at ratio 10 (token-mean over 3)."""
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3)
    plain = _log(10.0, 2.0, 10.0).requires_grad_()
    loss, stats = ppo_clip_loss(plain, torch.zeros(1, 3), adv, mask, PolicyLossConfig(agg="token-mean"))
    # without dual-clip: max(-A r, -A clip(r)) = 10, 2 (unclipped side wins for A < 0), -1.28
    assert loss.item() == pytest.approx((10.0 + 2.0 - 1.28) / 3, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(plain.grad, torch.tensor([[10 / 3, 2 / 3, 0.0]]))
    assert stats["dual_clip_frac"].item() == 0.0
    dual = plain.detach().clone().requires_grad_()
    loss, stats = ppo_clip_loss(dual, torch.zeros(1, 3), adv, mask,
                                PolicyLossConfig(agg="token-mean", clip_ratio_c=3.0))
    # with c = 3: the first token's loss is bounded at c |A| = 3 and has no gradient; ratio 2
    # is below the bound (kept), a positive advantage is never dual-clipped
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.28) / 3, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(dual.grad, torch.tensor([[0.0, 2 / 3, 0.0]]))
    assert stats["dual_clip_frac"].item() == pytest.approx(1 / 3)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)  # the A > 0 token, as before
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        PolicyLossConfig(clip_ratio_c=1.0)


# Two rows; per-token log weights log(pi_old / pi_rollout) and turn labels:
#   row 0: turn 0 = [ln 4, ln 4], turn 1 = [ln 0.5, ln 2]
#   row 1: turn 0 = [ln 0.25, 0], then a token outside the mask (garbage weight)
_W = torch.tensor([[4.0, 4.0, 0.5, 2.0], [0.25, 1.0, 1e6, 1.0]])
_TURN = torch.tensor([[0, 0, 1, 1], [0, 0, -1, -1]])
_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def _weights(**kw):
    from swe_aem.algo.losses import rollout_is_weights

    old = torch.log(_W)
    return rollout_is_weights(old, torch.zeros_like(old), _MASK, PolicyLossConfig(**kw), _TURN)


@pytest.mark.parametrize("kw, expected", [
    # today's TIS: min(w, 2) per token
    ({"tis_cap": 2.0}, [[2.0, 2.0, 0.5, 2.0], [0.25, 1.0]]),
    # product over each turn: 16 (capped at 10), 1; row 1's turn 0 is its own unit: 0.25
    ({"tis_cap": 10.0, "rollout_is": "sequence"}, [[10.0, 10.0, 1.0, 1.0], [0.25, 0.25]]),
    # geometric mean over each turn: 4, 1, 0.5
    ({"tis_cap": 10.0, "rollout_is": "geometric"}, [[4.0, 4.0, 1.0, 1.0], [0.5, 0.5]]),
    # geometric mean over each trajectory: exp((2 ln 4 + 0) / 4) = 2, exp(ln 0.25 / 2) = 0.5
    ({"tis_cap": 10.0, "rollout_is": "geometric", "rollout_is_unit": "trajectory"},
     [[2.0, 2.0, 2.0, 2.0], [0.5, 0.5]]),
])
def test_rollout_weights_by_hand(kw, expected):
    weights, masked = _weights(**kw)
    assert weights[0].tolist() == pytest.approx(expected[0], rel=1e-5)
    assert weights[1, :2].tolist() == pytest.approx(expected[1], rel=1e-5)
    assert not masked.any()


def test_a_response_with_an_extreme_weight_is_masked():
    """Band [0.6, 3] on the turns' geometric means: row 0's turn 0 (4) and row 1's turn 0
    (0.5) drop out whole; no weighting (tis_cap null), so the rest keep weight 1."""
    weights, masked = _weights(tis_cap=None, rollout_is="geometric",
                               rollout_is_mask_low=0.6, rollout_is_mask_high=3.0)
    assert masked.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert weights.tolist() == [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    # token level (IcePop-style) with the same band: only the tokens at 4, 4 and 0.25
    _, masked = _weights(tis_cap=2.0, rollout_is_mask_low=0.3, rollout_is_mask_high=3.0)
    assert masked.tolist() == [[True, True, False, False], [True, False, False, False]]
    # through a loss: reinforce at ratio 1, A = 1, token-mean over 6 sampled tokens
    lp = torch.zeros(2, 4, requires_grad=True)
    cfg = PolicyLossConfig(agg="token-mean", tis_cap=None, rollout_is="geometric",
                           rollout_is_mask_low=0.6, rollout_is_mask_high=3.0)
    loss, stats = reinforce_loss(lp, torch.log(_W), torch.ones(2, 4), _MASK, cfg,
                                 rollout_logprobs=torch.zeros(2, 4), turn=_TURN)
    assert stats["is_masked_frac"].item() == pytest.approx(4 / 6)
    loss.backward()
    # the masked tokens take no gradient; they stay in the normaliser (6), so a kept token's
    # gradient is -A * r / 6 with r = pi / pi_old = exp(0 - ln w) = 1 / w
    r = 1.0 / _W
    expected = -r * torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]]) / 6
    torch.testing.assert_close(lp.grad, expected)
    with pytest.raises(ValueError, match="turn"):
        reinforce_loss(lp, torch.log(_W), torch.ones(2, 4), _MASK, cfg, rollout_logprobs=torch.zeros(2, 4))


def test_default_rollout_weight_is_todays_tis_bit_for_bit():
    torch.manual_seed(3)
    lp, old, roll, adv = (torch.randn(3, 7) for _ in range(4))
    mask = (torch.rand(3, 7) > 0.3).int()
    cfg = PolicyLossConfig(agg="seq-mean-token-sum", tis_cap=2.0)
    loss, _ = ppo_clip_loss(lp, old, adv, mask, cfg, rollout_logprobs=roll)
    ratio = torch.exp((lp - old).clamp(-20.0, 20.0))
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
    per_token = per_token * torch.exp((old - roll).clamp(max=20.0)).clamp(max=2.0)
    from swe_aem.algo.losses import aggregate

    assert torch.equal(loss, aggregate(per_token, mask.float(), "seq-mean-token-sum"))


def test_gspo_per_turn_ratio_by_hand():
    """One trajectory, A = +1: turn 0's token ratios 2 and 0.5 (s = 1), turn 1's 1.5 and 1.5
    (s = 1.5, over 1.28: clipped, no gradient). Per trajectory the one ratio is
    exp(ln 1.5 / 2) = 1.2247, inside the range: every token keeps its gradient."""
    new = _log(2.0, 0.5, 1.5, 1.5)
    adv, mask, turn = torch.ones(1, 4), torch.ones(1, 4), torch.tensor([[0, 0, 1, 1]])
    per_turn = new.clone().requires_grad_()
    loss, stats = gspo_loss(per_turn, torch.zeros(1, 4), adv, mask,
                            PolicyLossConfig(agg="token-mean", gspo_unit="turn"), turn=turn)
    assert loss.item() == pytest.approx(-(1.0 + 1.0 + 1.28 + 1.28) / 4, rel=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx((1.0 + 1.0 + 1.5 + 1.5) / 4, rel=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(per_turn.grad, torch.tensor([[-0.25, -0.25, 0.0, 0.0]]))
    whole = new.clone().requires_grad_()
    loss, stats = gspo_loss(whole, torch.zeros(1, 4), adv, mask, PolicyLossConfig(agg="token-mean"))
    s = math.sqrt(1.5)
    assert loss.item() == pytest.approx(-s, rel=1e-6) and stats["clip_frac"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(whole.grad, torch.full((1, 4), -s / 4))


@pytest.mark.parametrize("bad, message", [
    (["algo.clip_ratio_c=0.9"], "algo.clip_ratio_c=0.9 must be > 1"),
    (["algo.rollout_is=seq"], "algo.rollout_is 'seq'"),
    (["algo.gspo_unit=step"], "algo.gspo_unit"),
    (["algo.rollout_is_unit=episode"], "algo.rollout_is_unit"),
    (["algo.rollout_is_mask_low=2", "algo.rollout_is_mask_high=0.5"], "0 <= low < high"),
])
def test_bad_loss_options_name_the_field(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=bad)


def test_trainer_passes_every_loss_option():
    from dataclasses import fields

    from swe_aem.train.update import policy_loss_config

    cfg = load_config(overrides=["algo.clip_ratio_c=3", "algo.rollout_is=geometric",
                                 "algo.rollout_is_unit=trajectory", "algo.rollout_is_mask_low=0.5",
                                 "algo.rollout_is_mask_high=2", "algo.gspo_unit=turn",
                                 "algo.policy_loss=gspo", "algo.tis_cap=5"])
    lc = policy_loss_config(cfg.algo)
    assert (lc.clip_ratio_c, lc.rollout_is, lc.rollout_is_unit, lc.rollout_is_mask_low,
            lc.rollout_is_mask_high, lc.gspo_unit, lc.name, lc.tis_cap) == (
        3.0, "geometric", "trajectory", 0.5, 2.0, "turn", "gspo", 5.0)
    default = policy_loss_config(load_config().algo)
    # every loss setting but agg and name keeps the loss dataclass's default under train.yaml
    same = {f.name for f in fields(default)} - {"agg", "tis_cap"}
    assert all(getattr(default, n) == getattr(PolicyLossConfig(), n) for n in same)

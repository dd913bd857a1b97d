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

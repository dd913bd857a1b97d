"""The sampling parity probe's pure parts: the per-token comparison and the refusal."""

import math

import pytest

from swe_aem.train.parity import ParityStats, SamplingParityError, check_parity, parity_stats


def test_identical_log_probs_have_zero_kl():
    lp = [-0.1, -2.3, -0.7]
    stats = parity_stats(lp, lp)
    assert stats == ParityStats(tokens=3, kl=0.0, max_abs_diff=0.0, mean_diff=0.0)
    check_parity(stats, 0.0, "here")  # at the bound: passes


def test_kl_is_the_k3_estimate_over_sampled_tokens():
    server, trainer = [-0.1, -1.0], [-0.6, -1.0]  # r = trainer - server = -0.5, 0
    stats = parity_stats(server, trainer)
    assert stats.kl == pytest.approx((math.exp(-0.5) - 1 + 0.5) / 2, rel=1e-12)
    assert stats.max_abs_diff == pytest.approx(0.5) and stats.mean_diff == pytest.approx(0.25)


def test_truncated_server_names_its_sampling_defaults():
    """top_k 1: the server gives every sampled token probability 1 (log-prob 0) while the
    trainer spreads mass over the vocabulary."""
    stats = parity_stats([0.0] * 4, [-1.2, -0.4, -2.0, -0.9])
    with pytest.raises(SamplingParityError, match=r"generation-config vllm.*larger rollout.parity_max_kl"):
        check_parity(stats, 0.01, "at step 0")
    check_parity(stats, 1e9, "at step 0")  # a large bound: only logged


def test_lower_server_log_probs_point_at_dtype_or_weights():
    stats = parity_stats([-3.0, -2.5], [-0.5, -0.4])
    with pytest.raises(SamplingParityError, match="dtype"):
        check_parity(stats, 0.01, "after the push of version 1")


def test_misaligned_or_empty_probes_are_errors():
    with pytest.raises(ValueError, match="server gave 2 log-probs, trainer 1"):
        parity_stats([-1.0, -1.0], [-1.0])
    with pytest.raises(ValueError, match="sampled no token"):
        parity_stats([], [])

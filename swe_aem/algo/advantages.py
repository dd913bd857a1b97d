"""Outcome advantage estimators, registered by name so configs can pick them.

Each estimator maps one scalar reward per trajectory and a group label (the
task the trajectory was sampled for) to one advantage per trajectory. Adding
an estimator is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from swe_aem.algo.groups import dense_groups, group_count, group_sum

AdvantageFn = Callable[[Tensor, Tensor], Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def decorate(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} registered twice")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorate


def get_advantage_estimator(name: str) -> AdvantageFn:
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise KeyError(f"unknown advantage estimator {name!r}; known: {known}") from None


@register_advantage("grpo")
def grpo_advantages(
    rewards: Tensor, group_index: Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """r - group mean, divided by (unbiased group std + eps) when normalize_std.

    A group of one has no baseline and gets 0.
    """
    r = rewards.float()
    inv, g = dense_groups(group_index)
    n = group_count(inv, g, r.dtype)
    mean = group_sum(r, inv, g) / n
    centred = r - mean[inv]
    adv = centred
    if normalize_std:
        var = group_sum(centred**2, inv, g) / (n - 1).clamp(min=1)
        adv = centred / (var.sqrt()[inv] + eps)
    return torch.where(n[inv] > 1, adv, torch.zeros_like(adv))


register_advantage("grpo_no_std")(partial(grpo_advantages, normalize_std=False))


@register_advantage("rloo")
def rloo_advantages(rewards: Tensor, group_index: Tensor) -> Tensor:
    """Leave-one-out: r_i minus the mean of the other members; a group of one gets 0."""
    r = rewards.float()
    inv, g = dense_groups(group_index)
    n = group_count(inv, g, r.dtype)[inv]
    others_mean = (group_sum(r, inv, g)[inv] - r) / (n - 1).clamp(min=1)
    return torch.where(n > 1, r - others_mean, torch.zeros_like(r))

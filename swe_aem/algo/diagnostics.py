"""Per-group diagnostics of AEM for logging (pure, detached)."""

from __future__ import annotations

import torch
from torch import Tensor

from swe_aem.algo.groups import dense_groups, group_count, group_reduce, group_sum


def predicted_entropy_drift(advantages: Tensor, surprisal: Tensor, group_index: Tensor) -> Tensor:
    """Per group: sum_i A_i * (S_i - mean_group S), the first-order entropy change / eta."""
    inv, g = dense_groups(group_index)
    s = surprisal.detach().double()
    mean_s = group_sum(s, inv, g) / group_count(inv, g, s.dtype)
    return group_sum(advantages.detach().double() * (s - mean_s[inv]), inv, g)


def aem_group_diagnostics(
    advantages: Tensor,
    aem_advantages: Tensor,
    alpha: Tensor,
    surprisal: Tensor,
    group_index: Tensor,
) -> dict[str, Tensor]:
    """One value per group for each diagnostic: the sign mix of the advantages,
    the spread of alpha and the predicted entropy drift before and after AEM."""
    inv, g = dense_groups(group_index)
    n = group_count(inv, g, torch.float64)
    a = advantages.detach().double()
    al = alpha.detach().double()
    return {
        "frac_pos_adv": group_sum((a > 0).double(), inv, g) / n,
        "frac_neg_adv": group_sum((a < 0).double(), inv, g) / n,
        "alpha_min": group_reduce(al, inv, g, "amin"),
        "alpha_mean": group_sum(al, inv, g) / n,
        "alpha_max": group_reduce(al, inv, g, "amax"),
        "drift_base": predicted_entropy_drift(a, surprisal, group_index),
        "drift_aem": predicted_entropy_drift(aem_advantages, surprisal, group_index),
    }


def summarize(per_group: dict[str, Tensor]) -> dict[str, float]:
    """Batch-level scalars for the metrics log (means over groups, extremes of alpha)."""
    out = {k: float(v.mean()) for k, v in per_group.items() if v.numel()}
    if per_group["alpha_min"].numel():
        out["alpha_min"] = float(per_group["alpha_min"].min())
        out["alpha_max"] = float(per_group["alpha_max"].max())
    return out

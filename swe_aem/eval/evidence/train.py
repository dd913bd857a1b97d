"""One RL run on the guessing game with the trainer's algorithm code.

Per step: play `tasks x group` episodes (a group = one target), GRPO advantages on the
0/1 rewards, broadcast to turns and (with lam > 0) rescaled by AEM at turn level (every
response of a group pooled), one on-policy PPO-clip update. The same seed gives both arms
the same initial weights and the same targets at every step.

Logged per step, besides success: the mean response entropy (AEM's proxy, mean token
entropy of a response), and for the theory check the measured change of response-level
entropy on this batch's own states (sum of token entropies of each response, re-scored
after the update) next to the predicted drift sum_i A_i (S_i - mean_group S) / R.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from swe_aem.algo.advantages import get_advantage_estimator
from swe_aem.algo.aem import apply_aem
from swe_aem.algo.diagnostics import predicted_entropy_drift
from swe_aem.algo.losses import PolicyLossConfig, ppo_clip_loss
from swe_aem.eval.evidence.game import GameConfig, GRUPolicy


@dataclass(frozen=True)
class RunConfig:
    game: GameConfig = field(default_factory=GameConfig)
    steps: int = 2000
    tasks: int = 16  # targets per step
    group: int = 8  # episodes per target
    hidden: int = 64
    lr: float = 1e-3
    estimator: str = "grpo"
    loss_agg: str = "token-mean"
    # theory probe: a plain SGD step of this size on a copy, from this batch's gradient alone
    # (Adam's update also carries earlier batches' gradients through its momentum)
    probe_lr: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepLog:
    success: float
    entropy: float  # mean over played responses of mean token entropy (nats/token)
    response_entropy: float  # mean over played responses of summed token entropy (nats)
    entropy_change: float  # measured: response_entropy after the update minus before, same states
    entropy_change_sgd: float  # the same after the probe's SGD step on this batch's gradient only
    drift_pred: float  # sum_i A_i (S_i - mean S) / R with the advantages actually used
    drift_base: float  # the same with the plain GRPO advantages
    frac_pos_adv: float  # share of trajectories with A > 0 (the "positives dominate" phase)
    frac_neg_adv: float
    alpha_max: float


def train_run(
    cfg: RunConfig, seed: int, lam: float, progress: Callable[[int], object] | None = None
) -> list[StepLog]:
    """Train one policy from scratch; lam = 0 is plain GRPO. `progress(n)` gets step counts."""
    g = cfg.game
    torch.manual_seed(seed)
    policy = GRUPolicy(g, cfg.hidden)
    probe = GRUPolicy(g, cfg.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    data_rng = torch.Generator().manual_seed(seed)
    sample_rng = torch.Generator().manual_seed(seed + 1)
    estimator = get_advantage_estimator(cfg.estimator)
    loss_cfg = PolicyLossConfig(agg=cfg.loss_agg)
    logs: list[StepLog] = []
    for _ in range(cfg.steps):
        task_targets = torch.randint(0, g.n_targets, (cfg.tasks,), generator=data_rng)
        ep = policy.play(task_targets.repeat_interleave(cfg.group), sample_rng)
        traj_group = torch.arange(cfg.tasks).repeat_interleave(cfg.group)
        adv = estimator(ep.reward, traj_group)

        logp, ent, mask = policy.score(ep)
        b = logp.shape[0]
        # responses = played turns, flattened in (episode, turn) order
        turn_logp = logp.detach().view(b, g.turns, g.digits).sum(-1)
        turn_ent = ent.view(b, g.turns, g.digits)
        played = ep.turn_active
        turn_traj = torch.arange(b)[:, None].expand(b, g.turns)[played]
        surprisal = -turn_logp[played]
        mean_ent = turn_ent.mean(-1)[played]
        aem = apply_aem(adv, traj_group, mean_ent, turn_traj, lam=lam, level="turn")

        turn_adv = torch.zeros(b, g.turns)
        turn_adv[played] = aem.turn_advantages
        token_adv = turn_adv.repeat_interleave(g.digits, dim=1)
        loss, _ = ppo_clip_loss(logp, logp.detach(), token_adv, mask, loss_cfg)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            probe.load_state_dict(policy.state_dict())
            for q, p in zip(probe.parameters(), policy.parameters(), strict=True):
                q -= cfg.probe_lr * p.grad
            _, ent_probe, _ = probe.score(ep)
        opt.step()

        with torch.no_grad():
            _, ent_after, _ = policy.score(ep)
        resp_ent_before = turn_ent.sum(-1)[played]
        resp_ent_after = ent_after.view(b, g.turns, g.digits).sum(-1)[played]
        resp_ent_probe = ent_probe.view(b, g.turns, g.digits).sum(-1)[played]
        resp_group = traj_group[turn_traj]
        n_resp = float(played.sum())
        logs.append(StepLog(
            success=float(ep.reward.mean()),
            entropy=float(mean_ent.mean()),
            response_entropy=float(resp_ent_before.mean()),
            entropy_change=float((resp_ent_after - resp_ent_before).mean()),
            entropy_change_sgd=float((resp_ent_probe - resp_ent_before).mean()),
            drift_pred=float(predicted_entropy_drift(aem.turn_advantages, surprisal, resp_group).sum()) / n_resp,
            drift_base=float(predicted_entropy_drift(adv[turn_traj], surprisal, resp_group).sum()) / n_resp,
            frac_pos_adv=float((adv > 0).float().mean()),
            frac_neg_adv=float((adv < 0).float().mean()),
            alpha_max=float(aem.alpha.max()),
        ))
        if progress is not None and (len(logs) % 10 == 0 or len(logs) == cfg.steps):
            progress(10 if len(logs) % 10 == 0 else len(logs) % 10)
    return logs

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
from swe_aem.evidence.game import Episodes, GameConfig, GRUPolicy


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
    # Theory probes: on every batch, two plain SGD steps of size probe_lr on copies of the
    # policy, one from the plain advantages and one from the AEM ones (lam = probe_lam),
    # each from this batch's gradient alone (Adam's update also carries earlier batches'
    # gradients through its momentum). Same states, so their difference is AEM's own effect.
    probe_lr: float = 0.05
    probe_lam: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepLog:
    success: float
    entropy: float  # mean over played responses of mean token entropy (nats/token)
    response_entropy: float  # mean over played responses of summed token entropy (nats)
    entropy_change: float  # measured: response_entropy after the update minus before, same states
    probe_change_plain: float  # the same after the SGD probe step with the plain advantages
    probe_change_aem: float  # ... with the AEM advantages (lam = probe_lam)
    drift_pred: float  # sum_i A_i (S_i - mean S) / R with the advantages actually trained on
    drift_base: float  # the same with the plain advantages
    drift_aem: float  # the same with the AEM advantages (lam = probe_lam)
    frac_pos_adv: float  # share of trajectories with A > 0 (the "positives dominate" phase)
    frac_neg_adv: float
    alpha_max: float


def _turn_loss(logp: torch.Tensor, mask: torch.Tensor, played: torch.Tensor,
               turn_values: torch.Tensor, cfg: PolicyLossConfig) -> torch.Tensor:
    """On-policy PPO-clip loss with each played turn's advantage on all of its tokens."""
    turn_adv = torch.zeros(played.shape)
    turn_adv[played] = turn_values
    token_adv = turn_adv.repeat_interleave(logp.shape[1] // played.shape[1], dim=1)
    return ppo_clip_loss(logp, logp.detach(), token_adv, mask, cfg)[0]


def _drift(turn_adv: torch.Tensor, surprisal: torch.Tensor, resp_group: torch.Tensor) -> float:
    """Predicted entropy drift sum_i A_i (S_i - mean_group S), per response."""
    return float(predicted_entropy_drift(turn_adv, surprisal, resp_group).sum()) / turn_adv.numel()


def _probe_entropy(policy: GRUPolicy, probe: GRUPolicy, loss: torch.Tensor, ep: Episodes, lr: float,
                   played: torch.Tensor) -> torch.Tensor:
    """Per-response summed token entropy after one SGD step of `loss`, taken on a copy."""
    params = list(policy.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    with torch.no_grad():
        probe.load_state_dict(policy.state_dict())
        for q, grad in zip(probe.parameters(), grads, strict=True):
            q -= lr * grad
        _, ent, _ = probe.score(ep)
    return ent.view(*played.shape, -1).sum(-1)[played]


def train_run(
    cfg: RunConfig, seed: int, lam: float, progress: Callable[[int], object] | None = None
) -> list[StepLog]:
    """Train one policy from scratch; lam = 0 is plain GRPO. `progress(n)` gets step counts."""
    g = cfg.game
    torch.manual_seed(seed)
    policy = GRUPolicy(g, cfg.hidden)
    probe_net = GRUPolicy(g, cfg.hidden)
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
        played = ep.turn_active
        turn_traj = torch.arange(b)[:, None].expand(b, g.turns)[played]
        surprisal = -logp.detach().view(b, g.turns, g.digits).sum(-1)[played]
        turn_ent = ent.view(b, g.turns, g.digits)
        mean_ent = turn_ent.mean(-1)[played]
        resp_group = traj_group[turn_traj]

        used = apply_aem(adv, traj_group, mean_ent, turn_traj, lam=lam, level="turn")
        plain = adv[turn_traj]
        aem_adv = apply_aem(adv, traj_group, mean_ent, turn_traj, cfg.probe_lam).turn_advantages
        resp_ent_before = turn_ent.sum(-1)[played]
        probe = {}
        for name, turn_adv in (("plain", plain), ("aem", aem_adv)):
            probe_loss = _turn_loss(logp, mask, played, turn_adv, loss_cfg)
            after = _probe_entropy(policy, probe_net, probe_loss, ep, cfg.probe_lr, played)
            probe[name] = float((after - resp_ent_before).mean())

        opt.zero_grad()
        _turn_loss(logp, mask, played, used.turn_advantages, loss_cfg).backward()
        opt.step()
        with torch.no_grad():
            _, ent_after, _ = policy.score(ep)
        resp_ent_after = ent_after.view(b, g.turns, g.digits).sum(-1)[played]
        logs.append(StepLog(
            success=float(ep.reward.mean()),
            entropy=float(mean_ent.mean()),
            response_entropy=float(resp_ent_before.mean()),
            entropy_change=float((resp_ent_after - resp_ent_before).mean()),
            probe_change_plain=probe["plain"],
            probe_change_aem=probe["aem"],
            drift_pred=_drift(used.turn_advantages, surprisal, resp_group),
            drift_base=_drift(plain, surprisal, resp_group),
            drift_aem=_drift(aem_adv, surprisal, resp_group),
            frac_pos_adv=float((adv > 0).float().mean()),
            frac_neg_adv=float((adv < 0).float().mean()),
            alpha_max=float(used.alpha.max()),
        ))
        if progress is not None and (len(logs) % 10 == 0 or len(logs) == cfg.steps):
            progress(10 if len(logs) % 10 == 0 else len(logs) % 10)
    return logs

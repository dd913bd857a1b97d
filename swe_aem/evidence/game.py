"""The toy task family and the policy that plays it.

Guessing game: a hidden target in [0, n_targets). Each turn the agent answers with a short
response of `digits` tokens (the guess, written in base `base`); the environment answers
with an observation token, "higher" or "lower". Reward 1 only if a guess hits the target
within `turns` turns, else 0: multi-turn and sparse, and solvable with certainty only by
learning binary search from the observations (a random policy succeeds ~20% of the time).

The policy is a one-layer GRU over the token stream obs, guess, obs, guess, ... trained
from scratch: small enough that a few hundred RL steps run in seconds on one CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from swe_aem.algo.entropy import token_entropy


@dataclass(frozen=True)
class GameConfig:
    n_targets: int = 31
    base: int = 6
    digits: int = 2
    turns: int = 5

    def __post_init__(self) -> None:
        if self.base**self.digits < self.n_targets:
            raise ValueError(f"{self.digits} digits in base {self.base} cannot write {self.n_targets - 1}")
        if self.turns < 1 or self.n_targets < 2:
            raise ValueError("need at least 1 turn and 2 targets")

    @property
    def start(self) -> int:  # observation token ids follow the digit ids
        return self.base

    @property
    def higher(self) -> int:
        return self.base + 1

    @property
    def lower(self) -> int:
        return self.base + 2

    @property
    def vocab(self) -> int:
        return self.base + 3

    @property
    def turn_len(self) -> int:
        """Tokens per turn in the stream: one observation, then the response."""
        return 1 + self.digits


@dataclass
class Episodes:
    """A batch of played games, laid out as one token stream per episode.

    tokens[b, t*turn_len] is turn t's observation, the next `digits` tokens its response.
    turn_active[b, t] says whether turn t was played (the game stops at a hit).
    """

    tokens: Tensor  # [B, turns * turn_len] long
    turn_active: Tensor  # [B, turns] bool
    reward: Tensor  # [B] float, 0/1
    targets: Tensor  # [B] long


class GRUPolicy(nn.Module):
    def __init__(self, game: GameConfig, hidden: int = 64) -> None:
        super().__init__()
        self.game = game
        self.embed = nn.Embedding(game.vocab, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, game.base)

    def forward(self, tokens: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, state = self.gru(self.embed(tokens), state)
        return self.head(out), state

    @torch.no_grad()
    def play(self, targets: Tensor, generator: torch.Generator) -> Episodes:
        """Sample one episode per target at temperature 1."""
        g = self.game
        b = targets.shape[0]
        tokens = torch.zeros(b, g.turns * g.turn_len, dtype=torch.long)
        active = torch.zeros(b, g.turns, dtype=torch.bool)
        alive = torch.ones(b, dtype=torch.bool)
        obs = torch.full((b,), g.start, dtype=torch.long)
        state = None
        place = g.base ** torch.arange(g.digits - 1, -1, -1)
        for t in range(g.turns):
            active[:, t] = alive
            col = t * g.turn_len
            tokens[:, col] = obs
            nxt = obs
            for d in range(g.digits):
                logits, state = self(nxt[:, None], state)
                nxt = torch.multinomial(torch.softmax(logits[:, -1], -1), 1, generator=generator)[:, 0]
                tokens[:, col + 1 + d] = nxt
            _, state = self(nxt[:, None], state)  # the last guess token is history too
            guess = (tokens[:, col + 1 : col + 1 + g.digits] * place).sum(-1)
            alive = alive & (guess != targets)
            obs = torch.where(guess < targets, g.higher, g.lower)
        reward = (~alive).float()
        return Episodes(tokens=tokens, turn_active=active, reward=reward, targets=targets)

    def score(self, ep: Episodes) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced pass over played episodes.

        Returns (logprob, entropy, mask), each [B, turns * digits] in response-token order:
        log-prob of each sampled response token (differentiable), the entropy of the
        distribution it was drawn from (detached), and 1 for tokens of played turns.
        """
        g = self.game
        logits, _ = self(ep.tokens[:, :-1])
        # position p predicts token p + 1: response token d of turn t sits at t*turn_len + 1 + d
        pos = torch.tensor([t * g.turn_len + d for t in range(g.turns) for d in range(g.digits)])
        lg = logits[:, pos]
        targets = ep.tokens[:, pos + 1]
        logp = torch.log_softmax(lg.float(), -1).gather(-1, targets[..., None])[..., 0]
        ent = token_entropy(lg.detach())
        mask = ep.turn_active.repeat_interleave(g.digits, dim=1)
        return logp, ent, mask

"""The per-turn credit record of a run: `credit/step-N.jsonl` in the run folder.

metrics.jsonl keeps a step's aggregates (alpha min / max, drift); this keeps every trained
turn's own values (`swe_aem.train.credit.credit_rows`: entropy, AEM alpha, advantage before
and after AEM, masked or not), so a viewer can show where AEM up- or down-weighted a turn.
Rank 0 writes it once per step that reached the credit assignment (a resumed run rewrites
the step it redoes). A few hundred bytes a turn: 512 episodes of 40 turns are ~4 MB a step.
With run.record_token_entropy each row also lists its turn's token entropies
(`token_entropy`): a few bytes more a sampled token, tens of MB a step at DeepSWE's scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from swe_aem.agent.trajectory import Episode
from swe_aem.jsonl import write_jsonl
from swe_aem.train.batch import Sample, TurnLayout
from swe_aem.train.credit import Credit, credit_rows

CREDIT_DIR = "credit"


def credit_path(run_dir: str | Path, step: int) -> Path:
    """Where step `step`'s record lies (named as trajectories/step-N.jsonl are)."""
    return Path(run_dir) / CREDIT_DIR / f"step-{step:06d}.jsonl"


def record_credit(run_dir: str | Path, step: int, episodes: Sequence[Episode], samples: Sequence[Sample],
                  layout: TurnLayout, fwd, credit: Credit, token_entropy: bool = False) -> Path:
    """Write step `step`'s credit rows (`fwd`: the step's ForwardStats, for each turn's
    entropy and length; with `token_entropy` (run.record_token_entropy) also each turn's
    token entropies, which forward_old must have kept); written compact, beside and renamed,
    so a reader never sees half a step."""
    if token_entropy and fwd.token_entropy is None:
        raise ValueError("record_credit(token_entropy=True) needs forward_old(token_entropy=True)'s values")
    path = credit_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = credit_rows(episodes, samples, layout, fwd.turn_entropy, fwd.turn_lengths, credit,
                       token_entropy=fwd.token_entropy if token_entropy else None)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_jsonl(tmp, ({"step": step, **row} for row in rows), compact=True)
    tmp.replace(path)
    return path

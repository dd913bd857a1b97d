"""Two replayed RL steps of the small random Llama on synthetic episodes, from a given source
tree; the trained weights saved for a bit-for-bit comparison across commits (issue 27's check
that moving code changed no update).

    git worktree add /tmp/before <commit>
    python scripts/replay_update.py /tmp/before /tmp/before.pt trainer.zero_stage=2
    python scripts/replay_update.py . /tmp/after.pt trainer.zero_stage=2
    python scripts/replay_update.py --compare /tmp/before.pt /tmp/after.pt
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def train(root: Path, out: Path, overrides: list[str]) -> None:
    sys.path[:0] = [str(root), str(root / "tests")]  # that tree's swe_aem and test helpers
    os.chdir(root)
    import torch
    from helpers import recorded_episodes

    from swe_aem.agent.trajectory import write_episodes
    from swe_aem.config import load_config
    from swe_aem.policy.models import small_random_model
    from swe_aem.train.loop import Trainer

    work = out.parent / f"{out.stem}-work"
    work.mkdir(parents=True, exist_ok=True)
    model = small_random_model(work / "model")
    episodes = recorded_episodes(tasks=3, seed=0, max_turns=3, prompt_len=(5, 15), response_len=(3, 12),
                                 cut_short=(0, 3))
    for ep in episodes:  # every group has signal
        ep.reward = float(ep.sample_index % 2)
    write_episodes(work / "replay.jsonl", episodes)
    cfg = load_config("rloo_aem", overrides=[
        f"model={model}", f"run.replay={work / 'replay.jsonl'}", "run.steps=2", "rollout.tasks_per_step=2",
        "rollout.samples_per_task=4", "trainer.lr=1e-3", "trainer.micro_batch_tokens=96",
        "trainer.logprob_chunk_size=64", "algo.aem_min_range=0.0", *overrides])
    trainer = Trainer(cfg, work / "run")
    trainer.train()
    torch.save({k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}, out)
    print(f"{root}: weights after 2 replayed steps -> {out}")


def compare(a: Path, b: Path) -> dict:
    import torch

    x, y = torch.load(a), torch.load(b)
    differ = {k: int((x[k] != y[k]).sum()) for k in x if not torch.equal(x[k], y[k])}
    return {"tensors": len(x), "identical": not differ and x.keys() == y.keys(),
            "entries_differing": sum(differ.values()), "tensors_differing": sorted(differ)}


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        print(json.dumps(compare(Path(sys.argv[2]), Path(sys.argv[3])), indent=1))
    else:
        train(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), sys.argv[3:])

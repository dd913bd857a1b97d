"""Helpers shared by test modules (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from swe_aem.agent.trajectory import Episode, Turn, write_episodes


def recorded_episodes(tasks: int = 2, samples: int = 4, seed: int = 0, max_turns: int = 2,
                      prompt_len: tuple[int, int] = (6, 12), response_len: tuple[int, int] = (4, 9),
                      cut_short: tuple[int, int] | None = None) -> list[Episode]:
    """Recorded episodes to train on (replay): `tasks` groups of `samples`, rewards 1 and 0
    alternating so every group has signal, 1 + k % max_turns turns of random tokens (lengths
    drawn from the half-open ranges) with random rollout log-probs. `cut_short` (task,
    sample) ends at max_turns: compact filtering keeps it in the baseline, out of the loss."""
    gen = torch.Generator().manual_seed(seed)
    eps = []
    for t in range(tasks):
        for k in range(samples):
            turns = []
            for _ in range(1 + k % max_turns):
                p = torch.randint(10, 49000, (int(torch.randint(*prompt_len, (1,), generator=gen)),), generator=gen)
                r = torch.randint(10, 49000, (int(torch.randint(*response_len, (1,), generator=gen)),),
                                  generator=gen)
                turns.append(Turn(prompt_ids=p.tolist(), response_ids=r.tolist(),
                                  logprobs=(-torch.rand(len(r), generator=gen) * 5).tolist(),
                                  finish_reason="stop"))
            eps.append(Episode(f"task-{t}", k, turns,
                               termination="max_turns" if (t, k) == cut_short else "finished",
                               reward=float((k + t) % 2 == 0), grade_status="resolved"))
    return eps


def write_short_replay(path) -> None:
    """A replay file of two tasks x four samples of one short turn, rewards 1 0 1 0: a group
    baseline with signal, for tests about what happens around one update."""
    write_episodes(path, [Episode(f"task-{t}", k, [Turn(prompt_ids=[10 + k, 20, 30], response_ids=[40 + t, 50],
                                                       logprobs=[-1.0, -2.0], finish_reason="stop")],
                                  termination="finished", reward=float(k % 2 == 0), grade_status="resolved")
                          for t in range(2) for k in range(4)])


SHARED = Path(__file__).parents[2] / "shared" / "datasets"  # ../shared: real rows, never committed


def shared_rows(sample: str) -> list[dict]:
    """The rows of one of ../shared/datasets' sample files; the test is skipped, saying why,
    where the folder is absent (a clean clone elsewhere)."""
    if not SHARED.is_dir():
        pytest.skip("needs ../shared/datasets (sample rows from public repositories, not committed)")
    return [json.loads(line) for line in (SHARED / sample).read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> str:
    """Rows as a JSONL dataset file; its path as a string (what load_instances takes)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o755) -> None:
    """One file of a Docker build context written from text."""
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))

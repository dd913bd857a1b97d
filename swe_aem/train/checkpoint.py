"""Atomic checkpoints: DeepSpeed state + trainer state + RNG, resumable after a kill.

A checkpoint is written into `.tmp-step-N/` and renamed to `step-N/` only when
complete (rename is atomic on one filesystem), so a run killed at any point
leaves either the previous checkpoint or the new one, never half of one.

Several nodes: `probe_storage` finds out at start-up whether every rank sees one run
folder. If so, global rank 0 makes, completes and renames each checkpoint. If not
(node-local disks), every node keeps its own copy: its LOCAL_RANK 0 does the folder
work on its disk and DeepSpeed writes the module state there too
(`checkpoint.use_node_local_storage`). On resume every rank loads the step rank 0
chooses, or every rank stops with a CheckpointError naming what is missing where.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from swe_aem.errors import SetupError
from swe_aem.train import ranks

COMPLETE = "trainer_state.json"  # written last inside the temp dir


@dataclass
class TrainState:
    step: int = 0  # the next training step to run
    episodes_seen: int = 0
    episodes_dropped: int = 0


class CheckpointError(SetupError, RuntimeError):
    """A checkpoint that exists but cannot be used."""


@dataclass(frozen=True)
class Storage:
    """What `probe_storage` found: whether every rank sees one run folder."""

    shared: bool
    nodes: int  # ranks with LOCAL_RANK 0
    ranks: int

    def describe(self, folder: Path) -> str:
        if self.shared:
            return f"checkpoints: {folder} is one folder for all {self.ranks} rank(s); rank 0 writes it"
        return (f"checkpoints: {folder} is not shared by the {self.nodes} nodes; each node keeps its "
                "own copy on its disk (node-local checkpoints, written by each node's LOCAL_RANK 0)")


def probe_storage(folder: Path, settle_s: float = 2.0) -> Storage:
    """Collective (every rank calls it, before the engine is built): does every rank see
    one `folder`? Each node's LOCAL_RANK 0 writes a probe named by a token rank 0 drew;
    every rank lists the probes it sees (waiting up to `settle_s` for a slow network
    filesystem) and the views are gathered. Shared: every rank sees every node's probe.
    Node-local: every rank sees exactly its own node's. Anything else (some nodes
    sharing a disk, others not) is refused: their checkpoints would overwrite each other."""
    if not ranks.multi():
        return Storage(shared=True, nodes=1, ranks=1)
    folder = Path(folder)
    box = [uuid.uuid4().hex if ranks.rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    probe = folder / f".storage-probe-{box[0]}"  # a new name: no cached lookup of it anywhere
    leader = ranks.local_rank() == 0
    if leader:
        probe.mkdir(parents=True, exist_ok=True)
        (probe / f"rank-{ranks.rank()}").write_text(box[0])
    nodes = sum(ranks.all_gather(int(leader)))  # also the barrier after the writes
    deadline = time.monotonic() + settle_s
    while True:
        seen = sorted(int(p.name.split("-")[1]) for p in probe.glob("rank-*")) if probe.is_dir() else []
        if len(seen) == nodes or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    # every rank has looked before a probe is removed
    views = ranks.all_gather((ranks.where(), str(folder), seen))
    shared = all(len(v) == nodes for _, _, v in views)
    if leader and (not shared or ranks.rank() == 0):
        shutil.rmtree(probe, ignore_errors=True)
    if not shared and any(len(v) != 1 for _, _, v in views):
        seen_by = "; ".join(f"{w} sees in {f} the probes of ranks {v}" for w, f, v in views)
        raise CheckpointError(
            f"the run folder is shared by some nodes and not by others ({nodes} nodes, each "
            f"node's LOCAL_RANK 0 wrote a probe: {seen_by}); their checkpoints would overwrite "
            "each other. Give every node a run folder of its own on local disk, or one folder "
            "that all of them share")
    return Storage(shared=shared, nodes=nodes, ranks=len(views))


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class CheckpointManager:
    def __init__(self, root: Path, keep: int = 2, node_local: bool = False, adapter_only: bool = False):
        """`node_local`: the run folder is not shared by the nodes (`probe_storage`); each
        node's LOCAL_RANK 0 writes its own copy (the engine must be built with
        `EngineSettings.node_local_checkpoints` so that DeepSpeed does the same).
        `adapter_only` (LoRA): the frozen base is left out (DeepSpeed's
        exclude_frozen_parameters) and loaded non-strictly: the run rebuilds it from the base."""
        self.root = Path(root)
        self.keep = keep
        self.node_local = node_local
        self.adapter_only = adapter_only

    def _writer(self) -> bool:
        """This rank makes, completes, renames and prunes the checkpoints on its disk."""
        return ranks.local_rank() == 0 if self.node_local else ranks.rank() == 0

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (an interrupted temp dir is not one)."""
        if not self.root.is_dir():
            return []
        done = [p for p in self.root.glob("step-*") if (p / COMPLETE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, engine, state: TrainState) -> Path:
        final = self.root / f"step-{state.step:06d}"
        tmp = self.root / f".tmp-step-{state.step:06d}"
        if self._writer():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        ranks.barrier()
        engine.save_checkpoint(str(tmp), tag="deepspeed", exclude_frozen_parameters=self.adapter_only)
        torch.save(rng_state(), tmp / f"rng-rank{ranks.rank()}.pt")
        ranks.barrier()
        if self._writer():
            (tmp / COMPLETE).write_text(json.dumps(asdict(state), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        ranks.barrier()
        return final

    def resume_point(self) -> Path | None:
        """Collective: the checkpoint every rank resumes from, chosen by rank 0 (its latest;
        None: start afresh). Every rank checks that it has that step complete; if one does
        not (a node-local disk lost a checkpoint, or a kill fell between two nodes'
        renames), every rank raises the same CheckpointError naming the node, the step and
        what it has: never a wait in a collective, never ranks at different steps."""
        mine = [int(p.name.split("-")[1]) for p in self.complete()]
        views = ranks.all_gather((ranks.where(), str(self.root), mine))
        steps = views[0][2]
        chosen = steps[-1] if steps else None
        if chosen is None:  # rank 0 starts afresh: no other rank may hold a checkpoint
            lacking = [v for v in views if v[2]]
        else:
            lacking = [v for v in views if chosen not in v[2]]
        if not lacking:
            return None if chosen is None else self.root / f"step-{chosen:06d}"
        name = lambda n: f"step-{n:06d}"
        has = lambda s: ", ".join(map(name, s)) or "none"
        if chosen is None:
            raise CheckpointError(
                f"cannot resume: rank 0 has no complete checkpoint under {views[0][1]}, but "
                + "; ".join(f"{w} has {has(s)} under {root}" for w, root, s in lacking)
                + ". Restore rank 0's checkpoints, or start a new run (another --run-dir)")
        common = set.intersection(*(set(s) for _, _, s in views))
        hint = (f"; {name(max(common))} is the newest step every node has: remove the newer "
                "ones where they exist to resume from it" if common else "")
        raise CheckpointError(
            f"cannot resume: rank 0 resumes from {name(chosen)} (under {views[0][1]}), which "
            + "; ".join(f"{w} lacks under {root} (it has: {has(s)})" for w, root, s in lacking)
            + f"; the ranks would start at different steps{hint}")

    def load(self, engine, path: Path | None = None) -> TrainState:
        path = path or self.latest()
        if path is None:
            raise CheckpointError(f"no complete checkpoint under {self.root}")
        try:
            state = TrainState(**json.loads((path / COMPLETE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path / COMPLETE} is unreadable: {exc}") from exc
        load_path, _ = engine.load_checkpoint(str(path), tag="deepspeed",
                                              load_module_strict=not self.adapter_only)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the model/optimizer state in {path}")
        rng_file = path / f"rng-rank{ranks.rank()}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return state

"""Publishing trainer weights to the rollout engine, and checking that they took.

Every sync has rank 0 write the full state dict as safetensors into a fresh
folder, and the vLLM server reloads from it (about a second for small models);
so the server must be able to read rank 0's disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

PROBE_TEXT = ("def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n\n"
              "The quick brown fox jumps over the lazy dog.")


class WeightSyncError(RuntimeError):
    """The server did not take the new weights."""


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The model's complete state dict on rank 0 (gathered under ZeRO-3), None elsewhere.

    A tied head keeps its own `lm_head.weight` entry: vLLM on CPU repacks the head
    separately, and a reload that only sees embed_tokens leaves it stale (measured:
    probe log-probs off by 1.07 without it, 3.5e-5 with it).
    """
    if engine.zero_optimization_stage() == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
    else:
        sd = engine.module.state_dict()
    if _rank() != 0:
        return None
    return {k.removeprefix("lm."): v for k, v in sd.items()}


def _write_folder(sd: dict[str, torch.Tensor], folder: Path, *extras) -> Path:
    """Write `model.safetensors` (plus each extra's `save_pretrained`) into a temp
    folder and rename it into place, so a reader never sees half a model."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()},
              str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for extra in extras:
        extra.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


class WeightPublisher:
    def __init__(self, root: Path, lm_config) -> None:
        self.root = Path(root)
        self.lm_config = lm_config
        self.version = 0
        self.path: Path | None = None

    def save(self, engine) -> Path | None:
        """Write safetensors into root/vN (rank 0) and drop the previous version."""
        sd = full_state_dict(engine)
        if sd is None:
            return None
        self.version += 1
        target = _write_folder(sd, self.root / f"v{self.version:06d}")
        if self.path is not None and self.path != target:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path = target
        return target

    def export(self, engine, folder: Path, tokenizer) -> None:
        """Write a servable HF folder: safetensors, config and tokenizer (rank 0 writes)."""
        sd = full_state_dict(engine)
        if sd is not None:
            _write_folder(sd, folder, self.lm_config, tokenizer)

    @staticmethod
    def probe_ids(tokenizer) -> list[int]:
        return tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def trainer_logprobs(self, engine, tokenizer) -> list[float]:
        """Log-prob of probe token t given tokens < t under the trainer's weights (all ranks)."""
        ids = torch.tensor([self.probe_ids(tokenizer)])
        dev = next(engine.module.parameters()).device
        lp, _ = engine(ids[:, :-1].to(dev), torch.ones_like(ids[:, :-1]).to(dev), ids[:, 1:].to(dev))
        return lp[0].float().cpu().tolist()

    def compare_probe(self, engine, tokenizer, server_logprobs: list[float] | None) -> dict[str, float]:
        trainer = self.trainer_logprobs(engine, tokenizer)
        if server_logprobs is None:
            return {}
        if len(server_logprobs) != len(trainer):
            raise WeightSyncError(f"probe length differs: server {len(server_logprobs)} vs "
                                  f"trainer {len(trainer)} tokens")
        diff = max(abs(a - b) for a, b in zip(server_logprobs, trainer))
        return {"probe_server_trainer_max_abs_diff": diff}

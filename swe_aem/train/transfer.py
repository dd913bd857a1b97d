"""The trainer's weights to vLLM through vLLM's own weight-transfer engine (NCCL or CUDA IPC).

`DeepSpeedSource` is vLLM's `WeightSource` over the trainer's module: the state dict's names
without the trainer's "lm." prefix (a tied head keeps its `lm_head.weight`, as
`weights.full_state_dict` does), in vLLM's layer groups (`layerwise_groups`: embeddings, each
decoder layer, then the final norm and head); under ZeRO-3 each group is gathered on its own
(`deepspeed.zero.GatheredParameters`) and partitioned again before the next, so no rank ever
holds the whole model. `VLLMWeightPush` hands it to vLLM's trainer engine
(`WeightTransferTrainerFactory`: NCCLTrainerWeightTransferEngine for a split placement,
IPCTrainerWeightTransferEngine for a colocated one) with vLLM's HTTP client
(`HTTPVLLMWeightSyncClient`: POST /init_weight_transfer_engine once, then /start_weight_update,
/update_weights, /finish_weight_update each push); every rank calls `send`, rank 0 drives the
server, the others join the gathers (and IPC's handle all-gather).

Imports vLLM: import this module only where such a transfer is chosen (vLLM is optional).
Tested here on CPU: the source on two gloo ranks under ZeRO-3 and the route sequence against
the stand-in server (tests/train/test_train_weights.py). Not run here (no GPU): the NCCL broadcast
and CUDA IPC sharing themselves, i.e. vLLM's data plane.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from itertools import chain
from urllib.parse import urlsplit

import httpx
import torch
from torch import nn
from vllm.distributed.weight_transfer import (
    HTTPVLLMWeightSyncClient,
    ParamMeta,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.base import TrainerInitInfo, layerwise_groups
from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

from swe_aem.policy.server import free_port

TRAINER_PREFIX = "lm."  # PolicyLogprobs holds the causal LM as `lm`


class DeepSpeedSource(WeightSource):
    """The trainer's weights, one layer group at a time, in vLLM's names.

    `zero3`: the parameters are ZeRO-3 partitions, gathered per group; otherwise (ZeRO 0/1/2)
    every rank holds them whole and they are read as they are. `device`: where the tensors
    are sent from (the rank's GPU); None leaves them where they are.
    """

    def __init__(self, module: nn.Module, *, zero3: bool, device: torch.device | None = None) -> None:
        self.module, self.zero3, self.device = module, zero3, device

    @classmethod
    def of(cls, engine, device: torch.device | None = None) -> DeepSpeedSource:
        """Over a DeepSpeed engine's module, at its ZeRO stage."""
        return cls(engine.module, zero3=engine.zero_optimization_stage() == 3, device=device)

    def _groups(self) -> list[list[tuple[str, torch.Tensor]]]:
        """The module's parameters and persistent buffers (its state dict, as they are now),
        in vLLM's names and layer groups."""
        tensors = {k.removeprefix(TRAINER_PREFIX): v for k, v in self.module.state_dict(keep_vars=True).items()}
        return [[(name, tensors[name]) for name in group] for group in layerwise_groups(list(tensors))]

    def metadata(self) -> list[ParamMeta]:
        """Names, dtypes and full shapes (a ZeRO-3 partition's `ds_shape`), gathering nothing."""
        return [ParamMeta(name, t.dtype, tuple(getattr(t, "ds_shape", t.shape)))
                for name, t in chain.from_iterable(self._groups())]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Each group gathered (a collective: every rank iterates, in the same order), its
        tensors yielded, then partitioned again. A tensor kept past its group keeps only
        its own storage (ZeRO-3 re-points the parameter, it does not overwrite it)."""
        for group in self._groups():
            with self._gathered(group):
                for name, t in group:
                    out = t.detach()
                    yield name, out if self.device is None else out.to(self.device)

    def _gathered(self, group: list[tuple[str, torch.Tensor]]) -> AbstractContextManager:
        if not self.zero3:
            return nullcontext()
        import deepspeed

        params = {id(t): t for _, t in group if hasattr(t, "ds_id")}  # a tied head once; buffers are whole
        return deepspeed.zero.GatheredParameters(list(params.values()))


class VersionedClient(HTTPVLLMWeightSyncClient):
    """vLLM's HTTP client, finishing each update with the trainer's weight version (vLLM's
    engines finish without one), so GET /weight_info names the weights served."""

    version: str | None = None

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        super().finish_weight_update(weight_version or self.version)


def address_toward(base_url: str) -> str:
    """This host's address on the route to the server (the loopback address for a local one):
    where the server's workers reach rank 0's NCCL rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((urlsplit(base_url).hostname, 9))  # UDP: nothing is sent, the route is chosen
        return sock.getsockname()[0]


def nccl_init_info(rank: int, base_url: str | None) -> NCCLTrainerInitInfo:
    """Rank 0 opens the rendezvous on a free port; the NCCL group is rank 0 and every rank of
    the server (GET /get_world_size). The other ranks join no NCCL group: vLLM reads only
    their rank there."""
    if rank != 0:
        return NCCLTrainerInitInfo(master_address="", master_port=0, world_size=0, rank=rank)
    resp = httpx.get(f"{base_url}/get_world_size", timeout=30.0)
    resp.raise_for_status()
    return NCCLTrainerInitInfo(master_address=address_toward(base_url), master_port=free_port(),
                               world_size=1 + int(resp.json()["world_size"]), rank=0)


def ipc_init_info(rank: int, base_url: str | None) -> IPCTrainerInitInfo:
    """Packed: each rank stages the tensors in a bounded buffer (1 GiB, vLLM's default);
    unpacked would keep every tensor alive until the update finishes, the whole model."""
    return IPCTrainerInitInfo(packed=True, rank=rank)


# the trainer-side init info of each transfer, from (rank, the server's URL on rank 0)
INIT_INFO: dict[str, Callable[[int, str | None], TrainerInitInfo]] = {"nccl": nccl_init_info,
                                                                      "ipc": ipc_init_info}


class VLLMWeightPush:
    """vLLM's trainer engine for `transfer` over a source, set up at the first send (on every
    rank, rank 0 against the server: the NCCL rendezvous or the IPC handshake) and reused.

    `device`: this rank's GPU, made current for the send: rank 0's send runs on whatever thread
    its policy session pushes from, and CUDA's current device (which vLLM's engines and
    DeepSpeed's gathers use) is per thread."""

    def __init__(self, source: WeightSource, transfer: str, rank: int, timeout_s: float = 300.0,
                 device: torch.device | None = None) -> None:
        if transfer not in INIT_INFO:
            raise ValueError(f"no weight transfer through vLLM named {transfer!r}; known: {sorted(INIT_INFO)}")
        self.source, self.transfer, self.rank, self.timeout_s = source, transfer, rank, timeout_s
        self.device = device
        self._client: VersionedClient | None = None
        self._engine: TrainerWeightTransferEngine | None = None

    @classmethod
    def of(cls, engine, transfer: str, rank: int, timeout_s: float = 300.0) -> VLLMWeightPush:
        """Over a DeepSpeed engine, sending from this rank's GPU."""
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        return cls(DeepSpeedSource.of(engine, device), transfer, rank, timeout_s, device)

    def send(self, base_url: str | None, version: int) -> None:
        """Every rank: push the source's weights as `version`. Rank 0 names the server
        (`base_url`); the other ranks pass None and only join the collectives."""
        if (base_url is None) != (self.rank != 0):
            raise ValueError(f"rank {self.rank}: rank 0, and only rank 0, names the server (got {base_url!r})")
        with torch.cuda.device(self.device) if self.device is not None else nullcontext():
            if self._engine is None:
                self._client = VersionedClient(base_url or "", timeout=self.timeout_s)  # called on rank 0 only
                self._engine = WeightTransferTrainerFactory.trainer_init(
                    INIT_INFO[self.transfer](self.rank, base_url), client=self._client, source=self.source)
            self._client.version = str(version)
            self._engine.send_weights()

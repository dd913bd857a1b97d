"""`swe-aem serve --model M`: a vLLM OpenAI-compatible server for a preset or a model folder."""

from __future__ import annotations

import argparse
import json
import signal
import time

from swe_aem.policy.models import ModelUnavailableError, resolve_model
from swe_aem.policy.server import ServerOptions, ServerStartError, VLLMServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="preset name or a local model folder")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--kv-cache-gib", type=int, default=None, help="CPU: VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--log", default=None, help="server log file (default: a temp file)")


def run(args: argparse.Namespace) -> int:
    try:
        preset, path = resolve_model(args.model)
    except (KeyError, ModelUnavailableError) as exc:
        print(f"error: {exc.args[0]}")
        return 1
    options = ServerOptions.from_preset(preset, max_model_len=args.max_model_len, dtype=args.dtype,
                                        kv_cache_gib=args.kv_cache_gib)
    server = VLLMServer(path, options, host=args.host, port=args.port, log_path=args.log,
                        startup_timeout_s=args.startup_timeout)
    print(f"starting vLLM for {path} (log: {server.log_path}) ...", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the server too
    try:
        with server:
            print(json.dumps({"base_url": server.base_url, "model": server.model_name,
                              "log": str(server.log_path)}), flush=True)
            while server.is_running():
                time.sleep(1.0)
            print(f"server exited; log tail:\n{server.log_tail()}")
            return 1
    except ServerStartError as exc:
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0

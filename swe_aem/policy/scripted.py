"""ScriptedPolicyServer: a deterministic STAND-IN for the vLLM server at the HTTP boundary.

Not a model. It answers POST /v1/completions in vLLM's token-exact shape with the
token ids of scripted text, so the scaffold, the sandbox and the grader can be
tested and benchmarked end to end without sampling noise. Log-probs it returns are
a fixed placeholder (SCRIPTED_LOGPROB), not a model's. With `weight_routes` it also
answers vLLM's weight-push routes (and lists them in /openapi.json) without loading
anything, recording the folder of each push: a fleet's pushes can be seen to arrive;
and vLLM's weight-transfer routes (/init_weight_transfer_engine, /start_weight_update,
/update_weights, /finish_weight_update, GET /weight_info, /get_world_size), recording
the names each update declared (the tensors themselves go over NCCL or CUDA IPC, which
it has not): an update outside start/finish, or before the init, is refused. It records
every POST in `calls`, and the prompt log-probs it scores move with each push, so a probe
sees weights change. With `sleep_routes` it also plays vLLM's sleep mode (POST /sleep,
/wake_up?tags=..., GET /is_sleeping): a completion or a weight load while the memory it
needs is asleep is refused, as the real server would fail.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs

from swe_aem.policy.server import SLEEP_ROUTES, WEIGHT_RELOAD_ROUTES, WEIGHT_TRANSFER_ROUTES

SCRIPTED_LOGPROB = -0.25
PUSH_LOGPROB_STEP = -0.125  # scored prompt log-probs move by this with each weight push

# respond(prompt_text, turn_number) -> the assistant text for that turn
Responder = Callable[[str, int], str]


def script(responses: list[str], then: str | None = None) -> Responder:
    """Turn k gets responses[k]; past the end, `then` (or the last response) repeats."""

    def respond(_prompt: str, turn: int) -> str:
        if turn < len(responses):
            return responses[turn]
        return then if then is not None else responses[-1]

    return respond


def editor_calls_for_patch(patch: str, fmt: str = "xml", context: int | None = None,
                           root: str = "/testbed") -> list[str]:
    """The str_replace_editor calls (in tool-call format fmt) that make the edits of a
    unified diff: one str_replace per hunk, one create per new file. Lets a scripted policy
    edit files the way the gold patch does.

    `context` bounds the unchanged lines kept before and after a hunk's changes (None: all
    of the diff's). 0 gives the smallest `old_str`, just the changed lines, which a model
    can copy from a view; a hunk that only adds lines keeps one line before it (or after).
    `root`: the repository's folder in the image (the instance's workdir).
    """
    calls: list[str] = []
    path, hunk, creating = "", [], False

    def flush() -> None:
        if not hunk:
            return
        lines = hunk
        if context is not None:
            changed = [i for i, (tag, _) in enumerate(hunk) if tag != " "]
            first, last = changed[0], changed[-1]
            lo, hi = max(0, first - context), min(len(hunk), last + 1 + context)
            if not any(tag == "-" for tag, _ in hunk[lo:hi]):  # an insertion needs an anchor
                lo, hi = (lo - 1, hi) if lo > 0 else (lo, min(len(hunk), hi + 1))
            lines = hunk[lo:hi]
        old = "".join(body for tag, body in lines if tag in "- ")
        new = "".join(body for tag, body in lines if tag in "+ ")
        if creating:
            calls.append(tool_call_text(fmt, "str_replace_editor", command="create", path=path,
                                        file_text=new))
        else:
            calls.append(tool_call_text(fmt, "str_replace_editor", command="str_replace", path=path,
                                        old_str=old, new_str=new))
        hunk.clear()

    for line in patch.splitlines(keepends=True):
        if line.startswith("diff --git"):
            flush()
        elif line.startswith("--- "):
            creating = line.strip() == "--- /dev/null"
        elif line.startswith("+++ "):
            path = f"{root.rstrip('/')}/" + line[4:].strip().removeprefix("b/")
        elif line.startswith("@@"):
            flush()
        elif line.startswith(("-", "+", " ")) and path:
            hunk.append((line[0], line[1:]))
    flush()
    return calls


def tool_call_text(fmt: str, name: str, **params: object) -> str:
    """A tool call written the way a model is told to write it in format fmt."""
    if fmt == "qwen":
        return f"<tool_call>\n{json.dumps({'name': name, 'arguments': params})}\n</tool_call>"
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<function={name}>\n{body}</function>"


def generation_prompt(tokenizer: Any) -> str:
    """What the tokenizer's chat template appends to ask for an assistant turn
    ("<|im_start|>assistant" for ChatML, "<start_of_turn>model" for Gemma's turns)."""
    msgs = [{"role": "user", "content": "u"}]
    with_prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    marker = with_prompt.removeprefix(without).strip()
    if not marker or not with_prompt.startswith(without):
        raise ValueError("the tokenizer's chat template adds no generation prompt of its own; "
                         "pass turn_marker= to ScriptedPolicyServer")
    return marker


class ScriptedPolicyServer:
    """`with ScriptedPolicyServer(tokenizer, respond) as srv: PolicyClient(srv.base_url)`.

    The turn number is the count of `turn_marker` (default: the chat template's
    generation prompt, which appears once per assistant turn) in the decoded prompt minus one.
    die_after=N makes the server stop answering after N completions (a crash).
    honour_stop=True ends a response at the first of the request's stop strings, as vLLM does
    (the token that completes it is the last one, no EOS after; finish_reason "stop"); by
    default the scripted text is returned whole.
    weight_routes=True answers the weight-push routes; `weight_pushes` lists the folders pushed,
    `transfers` the names of each update through the weight-transfer routes, `calls` every POST
    ("POST /wake_up?tags=weights") in order.
    sleep_routes=True (implies weight_routes) adds sleep mode; `asleep` is what sleeps now.
    """

    def __init__(
        self,
        tokenizer: Any,
        respond: Responder,
        *,
        turn_marker: str | None = None,
        end_with_eos: bool = True,
        honour_stop: bool = False,
        die_after: int | None = None,
        weight_routes: bool = False,
        sleep_routes: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.respond = respond
        self.turn_marker = turn_marker or generation_prompt(tokenizer)
        self.end_with_eos = end_with_eos
        self.honour_stop = honour_stop
        self.die_after = die_after
        self.weight_routes = weight_routes or sleep_routes
        self.sleep_routes = sleep_routes
        self.calls: list[str] = []  # with weight_routes: every POST, path and query, in order
        self.asleep: set[str] = set()  # "weights", "kv_cache"
        self.requests: list[dict[str, Any]] = []  # every request body received
        self.weight_pushes: list[str] = []  # the weights_path of every reload_weights call
        self.transfer_init: dict[str, Any] | None = None  # the init_info of the weight-transfer engine
        self.transfers: list[list[str]] = []  # the names of each finished weight-transfer update
        self.weight_version: str | None = None
        self._updating: list[str] | None = None  # the names of the update under way
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        text = self.tokenizer.decode(prompt, skip_special_tokens=False)
        turn = max(text.count(self.turn_marker) - 1, 0)
        ids = list(self.tokenizer.encode(self.respond(text, turn), add_special_tokens=False))
        if self.end_with_eos:
            ids.append(self.tokenizer.eos_token_id)
        finish = "stop"
        if self.honour_stop and body.get("stop"):
            ids = self._cut_at_stop(ids, body["stop"])
        if len(ids) > body.get("max_tokens", len(ids)):
            ids, finish = ids[: body["max_tokens"]], "length"
        return {
            "id": f"scripted-{len(self.requests)}",
            "object": "text_completion",
            "model": body.get("model", "scripted"),
            "choices": [{
                "index": 0,
                "text": self.tokenizer.decode(ids, skip_special_tokens=True),
                "token_ids": ids,
                "logprobs": {"token_logprobs": [SCRIPTED_LOGPROB] * len(ids),
                             "tokens": [f"token_id:{i}" for i in ids]},
                "finish_reason": finish,
                **({"prompt_logprobs": self.prompt_logprobs(prompt)}
                   if body.get("prompt_logprobs") is not None else {}),
            }],
        }

    def _cut_at_stop(self, ids: list[int], stops: list[str]) -> list[int]:
        """ids up to the token whose text completes the first stop string (vLLM's cut with
        include_stop_str_in_output, which PolicyClient sets); all of them when none occurs."""
        for n in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=False)
            if any(stop in text for stop in stops):
                return ids[:n]
        return ids

    def prompt_logprobs(self, prompt: list[int]) -> list[dict[str, dict[str, float]] | None]:
        """vLLM's prompt_logprobs shape; the value moves by PUSH_LOGPROB_STEP with each push."""
        value = SCRIPTED_LOGPROB + PUSH_LOGPROB_STEP * (len(self.weight_pushes) + len(self.transfers))
        return [None] + [{str(t): {"logprob": value}} for t in prompt[1:]]

    def _sleep_route(self, route: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """One sleep-mode POST or weight load: vLLM's effect on what is asleep."""
        with self._lock:
            if route == "/sleep":
                self.asleep = {"weights", "kv_cache"}  # level 1: weights to CPU, KV cache dropped
            elif route == "/wake_up":
                self.asleep -= set(query.get("tags") or ("weights", "kv_cache"))
            elif route == "/collective_rpc" and "weights" in self.asleep:
                return 409, {"error": "reload_weights while the weights sleep"}
            return 200, {}

    def _transfer_route(self, route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One POST of vLLM's weight-transfer routes, in the order its engines need them."""
        with self._lock:
            if route in ("/weight_info", "/get_world_size"):
                return 405, {"error": f"{route} takes GET"}
            if route == "/init_weight_transfer_engine":
                self.transfer_init = body["init_info"]
                return 200, {}
            if self.transfer_init is None:
                return 500, {"error": f"{route} before /init_weight_transfer_engine"}
            if "weights" in self.asleep:
                return 409, {"error": f"{route} while the weights sleep"}
            if route == "/start_weight_update":
                self._updating = []
                return 200, {}
            if self._updating is None:
                return 500, {"error": f"{route} outside /start_weight_update ... /finish_weight_update"}
            if route == "/update_weights":
                infos = body["update_info"]
                for info in infos if isinstance(infos, list) else [infos]:
                    self._updating += info["names"]
                return 200, {}
            self.transfers.append(self._updating)  # /finish_weight_update
            self._updating = None
            self.weight_version = body.get("weight_version") or self.weight_version
            return 200, {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/openapi.json" and server.weight_routes:
                    routes = ("/health", "/v1/completions", *WEIGHT_RELOAD_ROUTES, *WEIGHT_TRANSFER_ROUTES,
                              *(SLEEP_ROUTES if server.sleep_routes else ()))
                    self._send(200, {"paths": {route: {} for route in routes}})
                    return
                if self.path == "/weight_info" and server.weight_routes:
                    self._send(200, {"weight_version": server.weight_version})
                    return
                if self.path.partition("?")[0] == "/get_world_size" and server.weight_routes:
                    self._send(200, {"world_size": 1})
                    return
                if self.path == "/is_sleeping" and server.sleep_routes:
                    self._send(200, {"is_sleeping": bool(server.asleep)})
                    return
                self._send(200 if self.path == "/health" else 404, {})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else {}  # the weight routes' POSTs have no body
                route, _, query = self.path.partition("?")
                if server.weight_routes:
                    with server._lock:
                        server.calls.append(f"POST {self.path}")
                if server.sleep_routes:
                    if route in (*SLEEP_ROUTES, "/collective_rpc"):
                        code, payload = server._sleep_route(route, parse_qs(query))
                        if code != 200 or route != "/collective_rpc":
                            self._send(code, payload)
                            return
                    elif route == "/v1/completions" and server.asleep:
                        self._send(503, {"error": f"the server sleeps ({sorted(server.asleep)})"})
                        return
                if server.weight_routes and route in WEIGHT_TRANSFER_ROUTES:
                    self._send(*server._transfer_route(route, body))
                    return
                if server.weight_routes and route in WEIGHT_RELOAD_ROUTES:  # a push: not a request
                    if route == "/collective_rpc":
                        with server._lock:
                            server.weight_pushes.append(body.get("kwargs", {}).get("weights_path", ""))
                    self._send(200, {})
                    return
                with server._lock:
                    server.requests.append(body)
                    count = len(server.requests)
                if self.path != "/v1/completions":
                    self._send(404, {"error": f"scripted server has no {self.path}"})
                    return
                if server.die_after is not None and count > server.die_after:
                    # a crash: stop listening and drop this connection without an answer
                    threading.Thread(target=server.stop, daemon=True).start()
                    self.close_connection = True
                    return
                self._send(200, server.completion(body))

        return Handler

    def start(self) -> ScriptedPolicyServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.stop()

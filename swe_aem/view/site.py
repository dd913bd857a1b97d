"""The viewer's page and its data chunks: written as static files, or served locally.

Every piece of data is a small script, `SWEAEM.put(NAME, {...});`, that the page loads by
adding a <script> tag: that works from file:// (where fetch() of a local file is refused)
and from the server alike, and the two lay out the same names:

    index.html, static/app.{js,css}      the page (shipped in this package; no network)
    data/manifest.js                     the runs shown and, for two, their comparison
    data/R/run.js                        run R's curves, config, held-out rows, sets
    data/R/set-ID.js                     one set's episode table and its groups
    data/R/grp-ID-G.js                   group G of a set: its samples' credit side by side
    data/R/ep-ID-OFFSET.js               one episode (the line at byte OFFSET), with its credit

The server computes each chunk when asked, from the byte-offset index (a live run's new
lines are picked up, at most once a second); the static writer writes every chunk once.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from swe_aem.view.run_folder import RunSource, ViewError

STATIC = ("index.html", "app.js", "app.css")
CHUNK = re.compile(r"^/data/(?:manifest|(\d+)/(run|set-([\w.-]+)|grp-([\w.-]+)-(\d+)|ep-([\w.-]+)-(\d+)))\.js$")


def chunk(name: str, data: Any) -> bytes:
    """One data chunk: a script that hands `data` to the page under `name`. NaN and
    Infinity (a metric can be either) are valid in a script, where JSON.parse refuses them."""
    return f"SWEAEM.put({json.dumps(name)}, {json.dumps(data, ensure_ascii=True)});\n".encode()


def static_file(name: str) -> bytes:
    return resources.files("swe_aem.view").joinpath("static", name).read_bytes()


class Site:
    """The runs of one page (A, and B to compare with) and the chunks they give."""

    def __init__(self, sources: list[RunSource], compare: dict[str, Any] | None = None, *,
                 live: bool = False):
        self.sources, self.compare, self.live = sources, compare, live

    def manifest(self) -> dict[str, Any]:
        return {"runs": [{"name": s.folder.name, "kind": s.kind} for s in self.sources],
                "compare": self.compare, "live": self.live}

    @staticmethod
    def group_ids(source: RunSource, set_id: str) -> list[str]:
        """The tasks of a set in table order: group G of the page is the G-th."""
        return list(dict.fromkeys(e["task"] for e in source.set(set_id).entries() if "task" in e))

    def get(self, path: str) -> tuple[str, Any]:
        """(chunk name, data) of a data path such as /data/0/set-s000001.js."""
        m = CHUNK.match(path)
        if m is None:
            raise ViewError(f"no data chunk {path}")
        if path == "/data/manifest.js":
            return "manifest", self.manifest()
        r = int(m.group(1))
        if r >= len(self.sources):
            raise ViewError(f"no run {r}")
        src, name = self.sources[r], f"{r}/{m.group(2)}"
        if m.group(2) == "run":
            return name, src.run()
        if m.group(3):
            data = src.set_rows(m.group(3))
            data["group_ids"] = self.group_ids(src, m.group(3))
            return name, data
        if m.group(4):
            tasks = self.group_ids(src, m.group(4))
            g = int(m.group(5))
            if g >= len(tasks):
                raise ViewError(f"set {m.group(4)} has no group {g}")
            return name, src.group(m.group(4), tasks[g])
        return name, src.episode(m.group(6), int(m.group(7)))

    def paths(self) -> list[str]:
        """Every data path of the page (what the static writer writes)."""
        out = ["/data/manifest.js"]
        for r, src in enumerate(self.sources):
            out.append(f"/data/{r}/run.js")
            for s in src.sets:
                out.append(f"/data/{r}/set-{s.id}.js")
                out += [f"/data/{r}/grp-{s.id}-{g}.js" for g in range(len(self.group_ids(src, s.id)))]
                out += [f"/data/{r}/ep-{s.id}-{e['offset']}.js" for e in s.entries() if "error" not in e]
        return out


def write_site(site: Site, out: str | Path) -> Path:
    """The page and all its data as files under `out` (open out/index.html in a browser)."""
    out = Path(out)
    (out / "static").mkdir(parents=True, exist_ok=True)
    for name in STATIC:
        (out / (name if name == "index.html" else f"static/{name}")).write_bytes(static_file(name))
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)  # an older write's chunks are not this run's
    for path in site.paths():
        name, value = site.get(path)
        target = out / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(chunk(name, value))
    return out / "index.html"


def make_server(site: Site, host: str = "127.0.0.1", port: int = 0, *,
                refresh_s: float = 1.0) -> ThreadingHTTPServer:
    """An HTTP server of the page on host:port (0: a free port; `server.server_address`).
    Each data request first rescans what the runs' files added (at most every `refresh_s`)."""
    lock = threading.Lock()
    last = [0.0]

    def refreshed() -> None:
        if time.monotonic() - last[0] >= refresh_s:
            for s in site.sources:
                s.refresh()
            last[0] = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(static_file("index.html"), "text/html; charset=utf-8")
                elif path.startswith("/static/") and path.removeprefix("/static/") in STATIC[1:]:
                    kind = "text/css" if path.endswith(".css") else "text/javascript"
                    self._send(static_file(path.removeprefix("/static/")), f"{kind}; charset=utf-8")
                elif path.startswith("/data/"):
                    with lock:
                        refreshed()
                        name, value = site.get(path)
                    self._send(chunk(name, value), "text/javascript; charset=utf-8")
                else:
                    self.send_error(404, "not part of the viewer")
            except ViewError as exc:
                self._send(chunk("error", {"path": path, "error": str(exc)}), "text/javascript", 404)

        def _send(self, body: bytes, kind: str, code: int = 200) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve(site: Site, host: str, port: int, announce: Callable[[str], None] = print) -> None:
    """Serve until interrupted."""
    server = make_server(site, host, port)
    announce(f"swe-aem view: http://{host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

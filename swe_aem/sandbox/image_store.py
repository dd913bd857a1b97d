"""Images: the offline base image, building an image around a repo, pulls, and a disk budget.

No registry is reachable on our machines, so the base image is made with
debootstrap and `docker import`; instance images are built FROM it with the repo
at /testbed. Every tag is a content hash of its recipe, so a build is skipped when
nothing changed and redone when anything did.

Official images come from a registry: `pull_image` retries rate limits (429) and
registry 5xx with exponential back-off, says plainly when a tag does not exist,
and can rewrite names to a mirror (`--registry localhost:5000`). `ImageStore`
pulls missing images when a sandbox starts, prefetches the next steps' images in
the background and keeps image disk under a budget by evicting the least recently
used instance images (never a base image, never one in use).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import docker
import requests
from docker.errors import APIError, ImageNotFound, NotFound
from rich.console import Console

from swe_aem.sandbox.daemon import SandboxError

SANDBOXES = Path(__file__).resolve().parents[2] / "sandboxes"
BASE_DIR = SANDBOXES / "base"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_ENV = ["LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

console = Console(stderr=True)
log = logging.getLogger(__name__)


class Steps:
    """Progress of a long build: a live status line on a terminal, timestamped lines elsewhere
    (CI logs, `make` piped to a file), so a build is never silent for minutes."""

    def __init__(self, title: str):
        self.title = title
        self.start = time.monotonic()
        self._status = console.status(title) if console.is_terminal else None
        self._last = ""
        self._printed_at = -1e9

    def __enter__(self) -> Self:
        if self._status is not None:
            self._status.__enter__()
        else:
            self.update(self.title)
        return self

    def update(self, message: str) -> None:
        """Show `message`; off a terminal, print it when its stage (first two words) changes
        or 10 s have passed, so a per-package stream stays a readable log."""
        stage, last_stage = message.split()[:2], self._last.split()[:2]
        self._last = message
        now = time.monotonic()
        if self._status is not None:
            self._status.update(f"{message}  [{now - self.start:.0f} s]")
        elif stage != last_stage or now - self._printed_at >= 10:
            self._printed_at = now
            console.print(f"[{now - self.start:6.0f} s] {message}", highlight=False, markup=False,
                          soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:12]


def recipe_dir(recipe: str = "base") -> Path:
    """sandboxes/<recipe>/ (its packages.txt); every recipe shares base/setup.sh. Other
    recipes are toolchains that only some tests need (base-ruby: SWE-bench Multilingual's
    layout), so the Python base stays as it is and they are built only when used."""
    path = BASE_DIR if recipe == "base" else SANDBOXES / recipe
    if not re.fullmatch(r"base(-[a-z0-9]+)?", recipe) or not (path / "packages.txt").is_file():
        raise ValueError(f"no base image recipe {recipe!r}: expected sandboxes/base*/packages.txt")
    return path


def base_packages(recipe: str = "base") -> list[str]:
    lines = (recipe_dir(recipe) / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def base_tag(recipe: str = "base") -> str:
    """Tag of a base image: hash of the package list, the setup script and the image env."""
    parts = [(recipe_dir(recipe) / "packages.txt").read_bytes(), (BASE_DIR / "setup.sh").read_bytes(),
             SUITE.encode(), "\n".join(IMAGE_ENV).encode()]
    return f"swe-aem/{recipe}:{_sha(*parts)}"


def debian_mirror() -> str:
    """The Debian mirror apt already uses here (deb822 or one-line sources), else deb.debian.org."""
    candidates: list[Path] = [Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for block in text.split("\n\n"):
            uri = re.search(r"^URIs:\s*(\S+)", block, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.MULTILINE)
            if uri and suites and SUITE in suites.group(1).split() and "security" not in uri.group(1):
                return uri.group(1)
        for m in re.finditer(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", text, re.MULTILINE):
            if "security" not in m.group(1):
                return m.group(1)
    return DEFAULT_MIRROR


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Is `tag` (a name or an id) on the daemon?"""
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False


def _need_tool(tool: str, package: str) -> None:
    if shutil.which(tool):
        return
    console.print(f"[yellow]{tool} missing: apt-get install {package}")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    # wait for a dpkg lock another process holds; retry downloads a flaky mirror drops
    opts = ["-o", "DPkg::Lock::Timeout=600", "-o", "Acquire::Retries=5"]
    subprocess.run(["apt-get", *opts, "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", *opts, "install", "-y", "-qq", package], check=True, env=env)


def _debootstrap(cmd: list[str], rootfs: Path, status: Steps, attempts: int = 3) -> None:
    """Run debootstrap, again from scratch (its package cache kept) when a download fails:
    a mirror that drops out for a moment must not fail the set-up."""
    for attempt in range(1, attempts + 1):
        shutil.rmtree(rootfs, ignore_errors=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:  # type: ignore[union-attr]
            tail = (tail + [line.rstrip()])[-20:]
            if line.startswith("I: "):
                status.update(f"debootstrap: {line[3:].strip()[:90]}")
        if proc.wait() == 0:
            return
        if attempt < attempts:
            console.print(f"[yellow]debootstrap failed (try {attempt}/{attempts}), retrying in "
                          f"{15 * attempt} s: {tail[-1] if tail else ''}")
            time.sleep(15 * attempt)
    raise RuntimeError(f"debootstrap failed {attempts} times; last output:\n" + "\n".join(tail))


def build_base(client: docker.DockerClient, force: bool = False, recipe: str = "base") -> str:
    """debootstrap a minbase rootfs with the recipe's packages, set it up, `docker import` it."""
    tag = base_tag(recipe)
    if not force and image_exists(client, tag):
        console.print(f"[green]base image {tag} is up to date")
        return tag
    _need_tool("debootstrap", "debootstrap")
    mirror = debian_mirror()
    cache = Path.home() / ".cache" / "swe-aem" / "debootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swe-aem-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={cache}",
               f"--include={','.join(base_packages(recipe))}", SUITE, str(rootfs), mirror]
        with Steps(f"base image {tag}: debootstrap {SUITE} from {mirror} (a few minutes)") as status:
            _debootstrap(cmd, rootfs, status)
            status.update("setting up the rootfs (user swe, git config)")
            shutil.copy(BASE_DIR / "setup.sh", rootfs / "tmp" / "setup.sh")
            subprocess.run(["chroot", str(rootfs), "/bin/sh", "/tmp/setup.sh"], check=True)
            (rootfs / "tmp" / "setup.sh").unlink()
            status.update(f"docker import -> {tag}")
            tar_path = Path(tmp) / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar_path), "."],
                           check=True)
            repo, version = tag.split(":")
            changes = [f"ENV {e}" for e in IMAGE_ENV] + ['CMD ["/bin/bash"]',
                                                          f"LABEL swe-aem.recipe={version}"]
            client.api.import_image_from_file(str(tar_path), repository=repo, tag=version,
                                              changes=changes)
    console.print(f"[green]built base image {tag}")
    return tag


# ---------------------------------------------------------------- instance images

DOCKERFILE = """FROM {base}
COPY --chown=1000:1000 testbed /testbed
USER swe
WORKDIR /testbed
LABEL swe-aem.repo={repo} swe-aem.base-commit={commit}
"""


def build_repo_image(client: docker.DockerClient, repo: str, testbed: Path, commit: str,
                     tags: list[str]) -> None:
    """Build one image with `testbed` (a git work tree at `commit`) at /testbed; tag it `tags`."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        text = DOCKERFILE.format(base=base_tag(), repo=repo, commit=commit).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        tar.add(testbed, arcname="testbed")
    context.seek(0)
    image, _ = client.images.build(fileobj=context, custom_context=True, tag=tags[0], rm=True,
                                   forcerm=True, network_mode="none", pull=False)
    for tag in tags[1:]:
        name, version = tag.rsplit(":", 1)
        image.tag(name, version)




# ---------------------------------------------------------------- pulls

class ImageUnavailableError(SandboxError):
    """An image is not on the daemon and could not be pulled (or is not pulled on purpose)."""


class ImageNotInRegistryError(ImageUnavailableError):
    """The registry answered, and it has no such repository or tag."""


_MISSING = re.compile(r"manifest unknown|manifest for \S+ not found|not found: manifest|name unknown|"
                      r"repository does not exist|pull access denied|: not found", re.IGNORECASE)
_RETRYABLE = re.compile(r"toomanyrequests|too many requests|\b429\b|\b50[0234]\b|service unavailable|"
                        r"bad gateway|gateway time-?out|internal server error|connection reset|"
                        r"i/o timeout|TLS handshake timeout|unexpected EOF|read: connection", re.IGNORECASE)
_UNREACHABLE = re.compile(r"dial tcp|no such host|lookup |connection refused|network is unreachable|"
                          r"Client.Timeout", re.IGNORECASE)


def split_reference(image: str) -> tuple[str, str]:
    """"repo/name:tag" -> ("repo/name", "tag"); no tag -> "latest"; a digest stays in the tag part."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def _has_registry_host(image: str) -> bool:
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def with_registry(image: str, registry: str | None) -> str:
    """The name to pull `image` under from `registry` (a host[:port][/path] prefix).

    `swebench/sweb.eval.x86_64.a_1776_b-1:latest` with `localhost:5000` ->
    `localhost:5000/swebench/sweb.eval.x86_64.a_1776_b-1:latest`; a name that already
    names a registry host gets that host replaced. No registry: the name itself.
    """
    if not registry:
        return image
    registry = registry.strip().rstrip("/")
    if not registry or "://" in registry or any(c.isspace() for c in registry):
        raise ValueError(f"registry {registry!r} must be host[:port][/path], without a scheme")
    if _has_registry_host(image):
        image = image.partition("/")[2]
    return f"{registry}/{image}"


def classify_pull_error(text: str) -> str:
    """"missing" (no such repo/tag), "retry" (rate limit, registry 5xx, dropped connection),
    "unreachable" (no registry answers) or "fatal"."""
    if _UNREACHABLE.search(text):  # no connection at all: retrying only makes the user wait
        return "unreachable"
    if _RETRYABLE.search(text):
        return "retry"
    if _MISSING.search(text):
        return "missing"
    return "fatal"


def backoff_delays(attempts: int, base_s: float, max_s: float, rng: random.Random) -> list[float]:
    """Waits between `attempts` tries: exponential from `base_s`, capped at `max_s`, with
    jitter in [50%, 100%] so many workers hitting one rate limit do not retry in step."""
    return [min(max_s, base_s * 2 ** i) * (0.5 + 0.5 * rng.random()) for i in range(attempts - 1)]


def _error_text(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def _stream_pull(client: docker.DockerClient, ref: str,
                 progress: Callable[[int, int | None], None] | None) -> None:
    """One pull of `ref`; raises RuntimeError with the daemon's message on failure."""
    repo, tag = split_reference(ref)
    layers: dict[str, tuple[int, int]] = {}
    try:
        events = client.api.pull(repo, tag=tag, stream=True, decode=True)
        for event in events:
            if "error" in event:
                raise RuntimeError(str(event.get("error")))
            detail = event.get("progressDetail") or {}
            if progress and event.get("id") and detail.get("total"):
                layers[event["id"]] = (detail.get("current", 0), detail["total"])
                progress(sum(c for c, _ in layers.values()), sum(t for _, t in layers.values()))
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise RuntimeError(_error_text(exc)) from exc


def pull_image(client: docker.DockerClient, image: str, *, registry: str | None = None,
               attempts: int = 6, backoff_s: float = 2.0, max_backoff_s: float = 120.0,
               progress: Callable[[int, int | None], None] | None = None,
               sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> str:
    """Make `image` present on the daemon; returns "present" or "pulled".

    With `registry`, pulls the rewritten name and tags it as `image`, so the rest of the
    pipeline uses the dataset's own names. Rate limits and registry 5xx are retried with
    back-off; a missing tag raises ImageNotInRegistryError, anything else
    ImageUnavailableError, both naming the image, the registry name and the reason.
    """
    if image_exists(client, image):
        return "present"
    source = with_registry(image, registry)
    delays = backoff_delays(attempts, backoff_s, max_backoff_s, rng or random.Random())
    for attempt in range(attempts):
        try:
            _stream_pull(client, source, progress)
            break
        except RuntimeError as exc:
            text, kind = str(exc), classify_pull_error(str(exc))
            where = f"{image}" + (f" (as {source})" if source != image else "")
            if kind == "missing":
                raise ImageNotInRegistryError(
                    f"cannot pull {where}: the registry has no such image or tag ({text})") from exc
            if kind == "unreachable":
                raise ImageUnavailableError(
                    f"cannot pull {where}: no registry is reachable from the Docker daemon ({text})") from exc
            if kind == "fatal" or attempt == attempts - 1:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise ImageUnavailableError(f"cannot pull {where}{tries}: {text}") from exc
            log.warning("pull %s: %s; retry %d/%d in %.1f s", where, text, attempt + 1,
                        attempts - 1, delays[attempt])
            sleep(delays[attempt])
    if source != image:  # keep only the dataset's name: one name per image, as without a mirror
        repo, tag = split_reference(image)
        client.api.tag(source, repo, tag)
        client.api.remove_image(source, noprune=True)
    return "pulled"


# ---------------------------------------------------------------- disk budget and prefetch

def parse_size(text: str | int | None) -> int | None:
    """"200G", "1.5TB", "500MiB", a byte count, or None/""/"0" (no budget) -> bytes."""
    if text is None or isinstance(text, int):
        return text or None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r}: expected a number with an optional unit (K, M, G, T), e.g. 200G")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    return int(value) or None


class ImageStore:
    """Which images a run needs, when each was last used, and how much disk they may take.

    `ensure` makes an image present (pulling it, through `registry` when set) and then
    evicts least recently used instance images while image disk is over `max_disk_bytes`.
    Instance images are those whose name contains one of `instance_markers`; anything
    else (base and env images: `swe-aem/base`, `sweb.base.*`, `sweb.env.*`) is never
    evicted, nor is an image in use by this store's sandboxes or any container on the
    daemon. Images named with a `local_prefixes` prefix are built here: never pulled,
    never evicted. Last-use times persist in `state_file` (JSON) when one is given; an
    image this store never saw counts as the least recently used.
    """

    def __init__(self, *, registry: str | None = None, max_disk_bytes: int | None = None,
                 pull_missing: bool = True, state_file: Path | None = None,
                 instance_markers: tuple[str, ...] = ("sweb.eval.",),
                 local_prefixes: tuple[str, ...] = ("swe-aem/",), pull_attempts: int = 6,
                 backoff_s: float = 2.0):
        with_registry("x", registry)  # a malformed registry fails here, not at the first pull
        self.registry = registry
        self.max_disk_bytes = max_disk_bytes
        self.pull_missing = pull_missing
        self.state_file = state_file
        self.instance_markers = instance_markers
        self.local_prefixes = local_prefixes
        self.pull_attempts = pull_attempts
        self.backoff_s = backoff_s
        self._lock = threading.Lock()
        self._pull_locks: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._prefetcher: ThreadPoolExecutor | None = None
        if state_file is not None and state_file.is_file():
            try:
                self._last_used = {str(k): float(v) for k, v in json.loads(state_file.read_text()).items()}
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"image state file {state_file} is not a JSON object of times: {exc}") from exc

    # -------------------------------------------------------------- use
    def touch(self, image: str) -> None:
        """Record a use of `image` now (for LRU order)."""
        with self._lock:
            self._last_used[image] = time.time()
            if self.state_file is not None:
                self.state_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._last_used, indent=1, sort_keys=True))
                tmp.replace(self.state_file)

    def last_used(self, image: str) -> float:
        return self._last_used.get(image, 0.0)

    @contextmanager
    def using(self, client: docker.DockerClient, image: str) -> Iterator[None]:
        """Make `image` present and keep it from eviction while the block runs."""
        with self._lock:
            self._in_use[image] = self._in_use.get(image, 0) + 1
        try:
            self.ensure(client, image)
            yield
        finally:
            with self._lock:
                self._in_use[image] -= 1
                if not self._in_use[image]:
                    del self._in_use[image]

    def ensure(self, client: docker.DockerClient, image: str) -> str:
        """"present" or "pulled"; raises ImageUnavailableError when it cannot be had."""
        with self._lock:
            pull_lock = self._pull_locks.setdefault(image, threading.Lock())
        with pull_lock:  # two sandboxes of one image: one pull
            if image_exists(client, image):
                self.touch(image)
                return "present"
            if image.startswith(self.local_prefixes) and not self.registry:
                raise ImageUnavailableError(
                    f"image {image} is not on the Docker daemon; it is built here: run `swe-aem images build`")
            if not self.pull_missing:
                raise ImageUnavailableError(
                    f"image {image} is not on the Docker daemon and on-demand pulls are off; "
                    "pull it with `swe-aem images pull`")
            started, shown = time.monotonic(), [0.0]

            def report(done: int, total: int | None) -> None:
                if time.monotonic() - shown[0] >= 10:
                    shown[0] = time.monotonic()
                    log.info("pulling %s: %.0f of %.0f MB (%.0f s)", image, done / 1e6,
                             (total or 0) / 1e6, shown[0] - started)

            log.info("image %s is missing: pulling it%s", image,
                     f" from {self.registry}" if self.registry else "")
            try:
                result = pull_image(client, image, registry=self.registry, attempts=self.pull_attempts,
                                    backoff_s=self.backoff_s, progress=report)
            except ImageUnavailableError as exc:
                raise type(exc)(f"image {image} is not available: {exc}") from exc
            self.touch(image)
        self.evict(client, keep=[image])
        return result

    # -------------------------------------------------------------- eviction
    def is_instance_image(self, name: str) -> bool:
        """Evictable: an instance image that can be pulled again (not one built here)."""
        return any(m in name for m in self.instance_markers) and not name.startswith(self.local_prefixes)

    def image_disk(self, client: docker.DockerClient) -> int:
        """Bytes all images on the daemon take (shared layers counted once)."""
        return int(client.df().get("LayersSize") or 0)

    def evict(self, client: docker.DockerClient, keep: Iterable[str] = ()) -> list[str]:
        """Remove least recently used instance images until image disk fits the budget.

        Returns the names removed, oldest use first. Never removes an image in use
        (this store's sandboxes, any container on the daemon, `keep`) or a non-instance image.
        """
        if not self.max_disk_bytes:
            return []
        removed: list[str] = []
        with self._lock:
            busy = set(self._in_use) | set(keep)
        busy_ids = {c.get("ImageID") for c in client.api.containers(all=True)}  # one call, no inspects
        for name, image_id in self._eviction_order(client, busy, busy_ids):
            if self.image_disk(client) <= self.max_disk_bytes:
                break
            try:
                client.images.remove(name)
            except NotFound:
                continue
            except APIError as exc:  # e.g. a container started from it just now
                log.warning("could not evict %s: %s", name, _error_text(exc))
                continue
            log.info("evicted %s (image disk over %.1f GB)", name, self.max_disk_bytes / 1e9)
            with self._lock:
                self._last_used.pop(name, None)
            removed.append(name)
        return removed

    def _eviction_order(self, client: docker.DockerClient, busy: set[str],
                        busy_ids: set[str | None]) -> list[tuple[str, str]]:
        candidates = []
        for image in client.images.list():
            if image.id in busy_ids:
                continue
            tags = image.tags
            if not tags or not all(self.is_instance_image(t) for t in tags) or busy & set(tags):
                continue
            used = max(self.last_used(t) for t in tags)
            candidates.extend((used, t, image.id) for t in tags)
        candidates.sort()
        return [(tag, image_id) for _, tag, image_id in candidates]

    # -------------------------------------------------------------- prefetch
    def prefetch(self, client: docker.DockerClient, images: Iterable[str]) -> Future:
        """Pull `images` (in order, one at a time) in the background; the future's result maps
        each image to "present", "pulled" or the error text. Prefetched images count as
        used now, so the budget evicts them last."""
        wanted = list(dict.fromkeys(images))
        with self._lock:
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="swe-aem-prefetch")

        def run() -> dict[str, str]:
            results = {}
            for image in wanted:
                try:
                    results[image] = self.ensure(client, image)
                except ImageUnavailableError as exc:
                    log.warning("prefetch: %s", exc)
                    results[image] = str(exc)
            return results

        return self._prefetcher.submit(run)

    def close(self) -> None:
        """Stop the prefetch worker (waits for the pull under way)."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True)
            self._prefetcher = None

"""Pulls through a REAL registry on this machine (Debian's docker-registry on 127.0.0.1:5000,
started by scripts/ensure_registry.sh), on-demand pulls at sandbox start, retries on rate
limits (a fault-injecting proxy in front of the real registry), and the disk budget."""

from __future__ import annotations

import http.server
import io
import json
import random
import subprocess
import tarfile
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from swe_aem.commands import images as images_cmd
from swe_aem.sandbox import ImageNotInRegistryError, ImageStore, ImageUnavailableError, SandboxPool
from swe_aem.sandbox.image_store import (
    backoff_delays,
    classify_pull_error,
    image_exists,
    parse_size,
    pull_image,
    split_reference,
    with_registry,
)

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "127.0.0.1:5000"
OFFICIAL = "swebench/sweb.eval.x86_64.swe-aem_1776_{name}"


# ------------------------------------------------------------------ pure parts

def test_registry_rewrite_and_references():
    image = "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert with_registry(image, None) == image
    assert with_registry(image, "localhost:5000") == f"localhost:5000/{image}"
    assert with_registry(image, "mirror.example.org/cache/") == f"mirror.example.org/cache/{image}"
    assert with_registry("docker.io/swebench/x:1", "127.0.0.1:5000") == "127.0.0.1:5000/swebench/x:1"
    with pytest.raises(ValueError, match="without a scheme"):
        with_registry(image, "http://localhost:5000")
    assert split_reference("127.0.0.1:5000/a/b:v1") == ("127.0.0.1:5000/a/b", "v1")
    assert split_reference("127.0.0.1:5000/a/b") == ("127.0.0.1:5000/a/b", "latest")
    assert split_reference("a/b@sha256:00") == ("a/b", "sha256:00")


def test_pull_errors_are_classified():
    assert classify_pull_error("toomanyrequests: You have reached your pull rate limit") == "retry"
    assert classify_pull_error("received unexpected HTTP status: 503 Service Unavailable") == "retry"
    assert classify_pull_error("manifest for 127.0.0.1:5000/a:b not found: manifest unknown") == "missing"
    assert classify_pull_error("pull access denied for x, repository does not exist") == "missing"
    assert classify_pull_error("Get https://r/v2/: dial tcp: lookup r: no such host") == "unreachable"
    assert classify_pull_error("Get https://r/v2/: dial tcp 10.0.0.1:443: i/o timeout") == "unreachable"
    assert classify_pull_error("read tcp 10.0.0.2:5000: read: connection reset by peer") == "retry"
    assert classify_pull_error("invalid reference format") == "fatal"


def test_backoff_grows_caps_and_jitters():
    delays = backoff_delays(6, 2.0, 10.0, random.Random(0))
    assert len(delays) == 5
    for i, d in enumerate(delays):
        assert 0.5 * min(10.0, 2.0 * 2 ** i) <= d <= min(10.0, 2.0 * 2 ** i)
    assert backoff_delays(1, 2.0, 10.0, random.Random(0)) == []


def test_sizes_parse():
    assert parse_size("200G") == 200 * 1024 ** 3
    assert parse_size("1.5TB") == int(1.5 * 1024 ** 4)
    assert parse_size("512MiB") == 512 * 1024 ** 2
    assert parse_size("0") is None and parse_size(None) is None and parse_size(4096) == 4096
    with pytest.raises(ValueError, match="200G"):
        parse_size("lots")


# ------------------------------------------------------------------ the real registry

def test_registry_script_serves_only_on_loopback():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure_registry.sh")], capture_output=True,
                          text=True, timeout=60, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                  "REGISTRY_ADDR": "0.0.0.0:5000"})
    assert done.returncode == 1 and "0.0.0.0:5000 is not a loopback address" in done.stderr


@pytest.fixture(scope="module")
def registry():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure_registry.sh")], capture_output=True,
                          text=True, timeout=900, check=False)
    if done.returncode != 0:
        pytest.fail(f"no registry on {REGISTRY}: {done.stderr.strip()}")
    return REGISTRY


def _tiny_image(client, name: str, seed: int, megabytes: int = 6) -> str:
    """A FROM-scratch image with one incompressible layer (same bytes for the same seed)."""
    blob = random.Random(seed).randbytes(megabytes << 20)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for member, data in (("Dockerfile", b"FROM scratch\nCOPY blob /blob\n"), ("blob", blob)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = client.images.build(fileobj=context, custom_context=True, tag=name, rm=True, pull=False)
    return image.id


def _push(client, image: str, registry: str) -> str:
    """Push `image` to `registry` under the same path; returns the registry name."""
    remote = f"{registry}/{image}"
    repo, tag = split_reference(remote)
    client.images.get(image).tag(repo, tag)
    for event in client.api.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
    client.images.remove(remote)
    return remote


def _forget(client, image: str) -> None:
    """Remove every local tag of `image` (the image itself goes when no tag is left)."""
    if image_exists(client, image):
        for tag in client.images.get(image).tags:
            client.images.remove(tag, force=True)


@pytest.mark.slow
@pytest.mark.docker
def test_pull_through_a_registry_under_the_official_name(docker_client, registry):
    image = OFFICIAL.format(name="tiny-1") + ":v1"
    _tiny_image(docker_client, image, seed=1)
    _push(docker_client, image, registry)
    _forget(docker_client, image)
    assert not image_exists(docker_client, image)
    seen = []
    assert pull_image(docker_client, image, registry=registry,
                      progress=lambda done, total: seen.append((done, total))) == "pulled"
    assert image_exists(docker_client, image)  # tagged back under the dataset's own name
    assert docker_client.images.get(image).tags == [image]  # and only under it
    assert seen and max(total for _, total in seen) >= 6 << 20  # byte progress was reported
    assert pull_image(docker_client, image, registry=registry) == "present"
    with pytest.raises(ImageNotInRegistryError, match=r"no-such-tag.*as 127\.0\.0\.1:5000/swebench.*no such image or tag"):
        pull_image(docker_client, OFFICIAL.format(name="tiny-1") + ":no-such-tag", registry=registry)
    _forget(docker_client, image)


@pytest.mark.slow
@pytest.mark.docker
def test_images_pull_command_with_a_registry(docker_client, registry, local_instance, tmp_path, capsys):
    image = OFFICIAL.format(name="tiny-2") + ":v1"
    _tiny_image(docker_client, image, seed=2)
    _push(docker_client, image, registry)
    _forget(docker_client, image)
    # rows a dataset would hold (a real instance's 5.x row), naming images in the registry or not
    rows = [{**local_instance.to_swebench(), "instance_id": f"swe-aem__tiny-{n}", "image": name}
            for n, name in ((2, image), (3, OFFICIAL.format(name="tiny-3") + ":never-pushed"))]
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parser = __import__("argparse").ArgumentParser()
    images_cmd.add_arguments(parser)
    code = images_cmd.run(parser.parse_args(["pull", "--dataset", str(dataset), "--registry", registry]))
    results = json.loads(capsys.readouterr().out)
    assert code == 1
    assert results[image] == "pulled" and image_exists(docker_client, image)
    assert "no such image or tag" in results[rows[1]["image"]]
    _forget(docker_client, image)


@pytest.mark.slow
@pytest.mark.docker
def test_sandbox_start_pulls_a_missing_image(docker_client, registry, local_instance):
    import dataclasses

    official = OFFICIAL.format(name="textkit-1") + ":" + local_instance.image.rsplit(":", 1)[1]
    docker_client.images.get(local_instance.image).tag(*split_reference(official))
    _push(docker_client, official, registry)
    docker_client.images.remove(official)  # the local suite's own tag keeps the layers; the name is gone
    assert not image_exists(docker_client, official)
    spec = dataclasses.replace(local_instance, image=official)
    with SandboxPool(max_concurrency=1, run_id="pytest-ondemand",
                     images=ImageStore(registry=registry)) as pool, pool.sandbox(spec) as sb:
        assert sb.exec("git rev-parse HEAD").output.strip() == local_instance.base_commit
    assert image_exists(docker_client, official)
    docker_client.images.remove(official)
    absent = dataclasses.replace(local_instance, image=OFFICIAL.format(name="textkit-1") + ":never-pushed")
    pool = SandboxPool(max_concurrency=1, run_id="pytest-ondemand", images=ImageStore(registry=registry))
    with pytest.raises(ImageNotInRegistryError, match=r"image \S+:never-pushed is not available: cannot pull"), \
            pool.sandbox(absent):
        pass
    pool.close()
    pool = SandboxPool(max_concurrency=1, run_id="pytest-ondemand", images=ImageStore(pull_missing=False))
    with pytest.raises(ImageUnavailableError, match="on-demand pulls are off"), pool.sandbox(spec):
        pass
    pool.close()


class _RateLimiter(http.server.ThreadingHTTPServer):
    """A proxy in front of the real registry that answers 429 (Docker Hub's rate-limit
    body) to the first `limit` manifest requests: the fault is injected, the registry is real."""

    def __init__(self, upstream: str, limit: int):
        self.upstream, self.limit, self.rejected = upstream, limit, 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Forward)


class _Forward(http.server.BaseHTTPRequestHandler):
    server: _RateLimiter

    def _handle(self) -> None:
        with self.server.lock:
            reject = "/manifests/" in self.path and self.server.rejected < self.server.limit
            self.server.rejected += reject
        if reject:
            body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS",
                                           "message": "You have reached your pull rate limit"}]}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        request = urllib.request.Request(f"http://{self.server.upstream}{self.path}", method=self.command,
                                         headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as err:
            response = err
        data = response.read()
        self.send_response(response.status)
        for key, value in response.headers.items():
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = _handle

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@pytest.mark.docker
def test_rate_limits_are_retried_with_backoff(docker_client, registry):
    image = OFFICIAL.format(name="tiny-4") + ":v1"
    _tiny_image(docker_client, image, seed=4, megabytes=1)
    _push(docker_client, image, registry)
    _forget(docker_client, image)
    proxy = _RateLimiter(registry, limit=2)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    waits: list[float] = []
    try:
        mirror = f"127.0.0.1:{proxy.server_address[1]}"
        assert pull_image(docker_client, image, registry=mirror, backoff_s=0.2,
                          sleep=waits.append) == "pulled"
        assert proxy.rejected == 2 and len(waits) >= 1
        _forget(docker_client, image)
        proxy.limit, proxy.rejected = 100, 0  # a registry that never lets up: give up, say why
        with pytest.raises(ImageUnavailableError, match="after 3 tries.*(?i:too ?many ?requests|429)"):
            pull_image(docker_client, image, registry=mirror, attempts=3, backoff_s=0.01, sleep=lambda s: None)
    finally:
        proxy.shutdown()
        _forget(docker_client, image)


# ------------------------------------------------------------------ disk budget

@pytest.mark.slow
@pytest.mark.docker
def test_budget_evicts_least_recently_used_instance_images(docker_client, tmp_path):
    marker = f"swe-aem-evict-{uuid.uuid4().hex[:6]}/"
    names = [f"{marker}sweb.eval.x86_64.evict-{i}:v1" for i in range(4)]
    other = f"{marker}base:v1"  # no instance marker: never evicted
    holder = None
    try:
        for i, name in enumerate(names + [other]):
            _tiny_image(docker_client, name, seed=100 + i, megabytes=3)
        store = ImageStore(instance_markers=(marker + "sweb.eval.",), state_file=tmp_path / "lru.json")
        for name in names:  # use order: 0 oldest, 3 newest
            store.touch(name)
        assert store.evict(docker_client) == []  # no budget: nothing goes
        store.max_disk_bytes = store.image_disk(docker_client) + (1 << 40)
        assert store.evict(docker_client) == []  # under budget: nothing goes
        # the persisted order survives a new store object (a resumed run). A 1-byte budget evicts
        # every evictable image, oldest first (others share this daemon: any budget between
        # their usage and ours could be crossed by their builds while we measure)
        store = ImageStore(instance_markers=store.instance_markers, state_file=tmp_path / "lru.json",
                           max_disk_bytes=1)
        # 0 is in use by a sandbox of this store, 1 by a container on the daemon: both stay
        holder = docker_client.containers.create(names[1], command=["/blob"])
        with store.using(docker_client, names[0]):
            removed = store.evict(docker_client)
        assert removed == [names[2], names[3]]  # least recently used first
        assert all(image_exists(docker_client, n) for n in (names[0], names[1], other))
        assert not any(image_exists(docker_client, n) for n in names[2:])
    finally:
        if holder is not None:
            holder.remove(force=True)
        for name in names + [other]:
            _forget(docker_client, name)


@pytest.mark.slow
@pytest.mark.docker
def test_prefetch_pulls_next_images_in_the_background(docker_client, registry):
    images = [OFFICIAL.format(name=f"tiny-{n}") + ":v1" for n in (5, 6)]
    for n, image in zip((5, 6), images):
        _tiny_image(docker_client, image, seed=n, megabytes=1)
        _push(docker_client, image, registry)
        _forget(docker_client, image)
    store = ImageStore(registry=registry)
    pool = SandboxPool(run_id="pytest-prefetch", images=store)
    try:
        [future] = pool.prefetch(images + [OFFICIAL.format(name="tiny-7") + ":absent"])  # one daemon
        results = future.result(timeout=120)
        assert [results[i] for i in images] == ["pulled", "pulled"]
        assert "no such image or tag" in results[OFFICIAL.format(name="tiny-7") + ":absent"]
        assert all(image_exists(docker_client, i) and store.last_used(i) > 0 for i in images)
    finally:
        pool.close()
        store.close()
        for image in images:
            _forget(docker_client, image)

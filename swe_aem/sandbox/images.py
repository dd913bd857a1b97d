"""`swe-aem images build|pull`: the offline base image, the local suite's images, official pulls.

No registry is reachable on our machines, so the base image is made with
debootstrap and `docker import`; instance images are built FROM it with the repo
at /testbed. Every tag is a content hash of its recipe, so a build is skipped when
nothing changed and redone when anything did.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import requests
from docker.errors import APIError, ImageNotFound
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from swe_aem.sandbox.engine import connect

SANDBOXES = Path(__file__).resolve().parents[2] / "sandboxes"
BASE_DIR = SANDBOXES / "base"
BASE_REPO = "swe-aem/base"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_ENV = ["LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

console = Console(stderr=True)


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:12]


def base_packages() -> list[str]:
    lines = (BASE_DIR / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def base_tag() -> str:
    """Tag of the base image: hash of the package list, the setup script and the image env."""
    recipe = [(BASE_DIR / "packages.txt").read_bytes(), (BASE_DIR / "setup.sh").read_bytes(),
              SUITE.encode(), "\n".join(IMAGE_ENV).encode()]
    return f"{BASE_REPO}:{_sha(*recipe)}"


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


def _image_exists(client: docker.DockerClient, tag: str) -> bool:
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
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)


def build_base(client: docker.DockerClient, force: bool = False) -> str:
    """debootstrap a minbase rootfs with the recipe's packages, set it up, `docker import` it."""
    tag = base_tag()
    if not force and _image_exists(client, tag):
        console.print(f"[green]base image {tag} is up to date")
        return tag
    _need_tool("debootstrap", "debootstrap")
    mirror = debian_mirror()
    cache = Path.home() / ".cache" / "swe-aem" / "debootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swe-aem-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={cache}",
               f"--include={','.join(base_packages())}", SUITE, str(rootfs), mirror]
        with console.status(f"debootstrap {SUITE} from {mirror}") as status:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            tail: list[str] = []
            for line in proc.stdout:  # type: ignore[union-attr]
                tail = (tail + [line.rstrip()])[-20:]
                if line.startswith("I: "):
                    status.update(f"debootstrap: {line[3:].strip()[:90]}")
            if proc.wait() != 0:
                raise RuntimeError("debootstrap failed:\n" + "\n".join(tail))
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


def build_local_suite(client: docker.DockerClient, force: bool = False) -> list[str]:
    """Build every local instance's image (one build per repo snapshot, one tag per instance)."""
    from swe_aem.data.local_suite import load_local_suite, materialize_repo

    instances = load_local_suite()
    by_repo: dict[str, list] = {}
    for inst in instances:
        by_repo.setdefault(inst.repo, []).append(inst)
    built: list[str] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("instance images", total=len(instances))
        for repo, group in sorted(by_repo.items()):
            tags = [inst.image for inst in group]
            if not force and all(_image_exists(client, t) for t in tags):
                progress.update(task, advance=len(group), description=f"{repo}: up to date")
                continue
            progress.update(task, description=f"building {repo}")
            with tempfile.TemporaryDirectory(prefix="swe-aem-testbed-") as tmp:
                testbed = Path(tmp) / "testbed"
                commit = materialize_repo(repo, testbed)
                build_repo_image(client, repo, testbed, commit, tags)
            built += tags
            progress.update(task, advance=len(group))
    return built


# ---------------------------------------------------------------- official images

def pull_images(client: docker.DockerClient, images: list[str]) -> dict[str, str]:
    """Pull each image with a byte progress bar; returns image -> "present" | "pulled" | error text.

    An unreachable registry shows up as an error for that image (said plainly), never a hang:
    the client's timeout bounds every request.
    """
    results: dict[str, str] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        overall = progress.add_task("images", total=len(images))
        for image in images:
            if _image_exists(client, image):
                results[image] = "present"
                progress.advance(overall)
                continue
            task = progress.add_task(image[-60:], total=None)
            layers: dict[str, tuple[int, int]] = {}
            repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            try:
                for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                    if "error" in event:
                        raise APIError(event["error"])
                    detail = event.get("progressDetail") or {}
                    if event.get("id") and detail.get("total"):
                        layers[event["id"]] = (detail.get("current", 0), detail["total"])
                        progress.update(task, completed=sum(c for c, _ in layers.values()),
                                        total=sum(t for _, t in layers.values()))
                results[image] = "pulled"
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
                results[image] = _pull_error(exc)
                console.print(f"[red]{image}: {results[image]}")
            progress.remove_task(task)
            progress.advance(overall)
    return results


_UNREACHABLE = re.compile(r"dial tcp|no such host|lookup |connection refused|i/o timeout|"
                          r"TLS handshake|network is unreachable|Client.Timeout", re.IGNORECASE)


def _pull_error(exc: BaseException) -> str:
    """One plain line: why this image could not be pulled."""
    detail = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    text = detail[0][:300] if detail else type(exc).__name__
    if _UNREACHABLE.search(text) or isinstance(exc, requests.exceptions.RequestException):
        return f"cannot pull: no registry is reachable from the Docker daemon ({text})"
    return f"cannot pull: {text}"


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="offline base image + every local instance image")
    build.add_argument("--force", action="store_true", help="rebuild even if the tags exist")
    build.add_argument("--base-only", action="store_true")
    pull = sub.add_parser("pull", help="pre-pull the official images of a dataset")
    pull.add_argument("--dataset", default="SWE-bench/SWE-bench_Verified")
    pull.add_argument("--split", default="test")
    pull.add_argument("--instance-ids", nargs="*", default=None)
    pull.add_argument("--timeout", type=float, default=600, help="seconds per Docker API request")
    reap_cmd = sub.add_parser("reap", help="remove sandbox containers that crashed runs left behind")
    reap_cmd.add_argument("--run-id", default=None,
                          help="remove every container of this run (default: those whose process is gone)")
    for p in (build, pull, reap_cmd):
        p.add_argument("--docker-host", default=None, help="DOCKER_HOST URL (default: environment)")


def run(args: argparse.Namespace) -> int:
    import json

    if args.action == "reap":
        from swe_aem.sandbox.pool import reap

        removed = reap(args.run_id, docker_host=args.docker_host)
        print(json.dumps({"removed": removed}, indent=2))
        return 0
    if args.action == "build":
        client = connect(args.docker_host, timeout=1800)
        build_base(client, force=args.force)
        if not args.base_only:
            build_local_suite(client, force=args.force)
        return 0
    from swe_aem.data.instances import load_instances

    client = connect(args.docker_host, timeout=args.timeout)
    instances = load_instances(args.dataset, split=args.split, instance_ids=args.instance_ids)
    results = pull_images(client, sorted({inst.image for inst in instances}))
    print(json.dumps(results, indent=2))
    return 0 if all(r in ("present", "pulled") for r in results.values()) else 1

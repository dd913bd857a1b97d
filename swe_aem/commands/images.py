"""`swe-aem images build|pull|reap`: the local suite's images, official pulls, leftover containers.

The command sits at the CLI edge because it joins two packages that do not know
each other's insides: datasets (swe_aem.data: which instances, which image names)
and Docker (swe_aem.sandbox: building, pulling, the disk budget, the reaper).
"""

from __future__ import annotations

import argparse
import json
import time

import docker
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from swe_aem.sandbox.daemon import connect
from swe_aem.sandbox.image_store import (
    ImageStore,
    ImageUnavailableError,
    build_base,
    console,
    parse_size,
    pull_image,
)


def pull_images(client: docker.DockerClient, images: list[str], *, registry: str | None = None,
                max_disk_bytes: int | None = None, attempts: int = 6,
                backoff_s: float = 2.0) -> dict[str, str]:
    """Pull each image with a byte progress bar (lines off a terminal); returns image ->
    "present" | "pulled" | the error text. With a disk budget, least recently used
    instance images are evicted after each pull (never the one just pulled)."""
    store = ImageStore(registry=registry, max_disk_bytes=max_disk_bytes, pull_attempts=attempts,
                       backoff_s=backoff_s)
    results: dict[str, str] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=console, disable=not console.is_terminal) as progress:
        overall = progress.add_task(f"{len(images)} images", total=len(images))
        for n, image in enumerate(images, 1):
            task = progress.add_task(image[-60:], total=None)
            start, shown = time.monotonic(), [0.0]

            def report(done: int, total: int | None, task=task, image=image, shown=shown) -> None:
                progress.update(task, completed=done, total=total)
                if not console.is_terminal and time.monotonic() - shown[0] >= 10:
                    shown[0] = time.monotonic()
                    console.print(f"  {image}: {done / 1e6:.0f}/{(total or 0) / 1e6:.0f} MB", highlight=False,
                                  soft_wrap=True)

            try:
                results[image] = pull_image(client, image, registry=registry, attempts=attempts,
                                            backoff_s=backoff_s, progress=report)
                store.touch(image)
                evicted = store.evict(client, keep=[image])
                if evicted:
                    console.print(f"evicted (disk budget): {', '.join(evicted)}", highlight=False)
            except ImageUnavailableError as exc:
                results[image] = str(exc)
            status = results[image] if results[image] in ("present", "pulled") else "FAILED"
            if not console.is_terminal or status == "FAILED":
                console.print(f"[{n}/{len(images)}] {image}: {status} ({time.monotonic() - start:.0f} s)"
                              + ("" if status != "FAILED" else f"\n  {results[image]}"),
                              highlight=False, markup=False, soft_wrap=True)
            progress.remove_task(task)
            progress.advance(overall)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="offline base image + every local instance image")
    build.add_argument("--force", action="store_true", help="rebuild even if the tags exist")
    build.add_argument("--base-only", action="store_true")
    pull = sub.add_parser("pull", help="pre-pull the official images of a dataset")
    pull.add_argument("--dataset", default="SWE-bench/SWE-bench_Verified")
    pull.add_argument("--dataset-format", default=None,
                      help="swe-bench | swe-gym | swe-smith | r2e-gym (default: from the dataset name/rows)")
    pull.add_argument("--split", default="test")
    pull.add_argument("--instance-ids", nargs="*", default=None)
    pull.add_argument("--registry", default=None,
                      help="pull from this registry instead (host[:port][/path]; "
                           "swebench/x -> HOST/swebench/x, tagged back as swebench/x)")
    pull.add_argument("--max-image-disk", default=None,
                      help="disk budget for images, e.g. 200G: evict least recently used instance images")
    pull.add_argument("--retries", type=int, default=6, help="tries per image on rate limits / registry 5xx")
    pull.add_argument("--timeout", type=float, default=600, help="seconds per Docker API request")
    reap_cmd = sub.add_parser("reap", help="remove sandbox containers that crashed runs left behind")
    reap_cmd.add_argument("--run-id", default=None,
                          help="remove every container of this run (default: those whose process is gone)")
    for p in (build, pull, reap_cmd):
        p.add_argument("--docker-host", default=None, help="DOCKER_HOST URL (default: environment)")


def run(args: argparse.Namespace) -> int:
    if args.action == "reap":
        from swe_aem.sandbox.pool import reap

        print(json.dumps({"removed": reap(args.run_id, docker_host=args.docker_host)}, indent=2))
        return 0
    if args.action == "build":
        from swe_aem.data.local_suite import build_local_suite

        client = connect(args.docker_host, timeout=1800)
        build_base(client, force=args.force)
        if not args.base_only:
            build_local_suite(client, force=args.force)
            from swe_aem.data.generator import build_images as build_generated

            build_generated(client, force=args.force)
        return 0
    from swe_aem.data import load_instances

    budget = parse_size(args.max_image_disk)
    client = connect(args.docker_host, timeout=args.timeout)
    instances = load_instances(args.dataset, split=args.split, instance_ids=args.instance_ids,
                               dataset_format=args.dataset_format)
    results = pull_images(client, sorted({inst.image for inst in instances}), registry=args.registry,
                          max_disk_bytes=budget, attempts=args.retries)
    print(json.dumps(results, indent=2))
    return 0 if all(r in ("present", "pulled") for r in results.values()) else 1

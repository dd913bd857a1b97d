"""Engine script, images and the local suite's image contents, on the real engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from swe_aem.commands import images as images_cmd
from swe_aem.data.local_suite import build_local_suite
from swe_aem.sandbox import image_store as images
from swe_aem.sandbox.daemon import host_label

ROOT = Path(__file__).resolve().parents[2]


def test_base_tag_is_a_content_hash(tmp_path, monkeypatch):
    tag = images.base_tag()
    assert tag.startswith("swe-aem/base:") and len(tag.split(":")[1]) == 12
    copy = tmp_path / "base"
    shutil.copytree(images.BASE_DIR, copy)
    monkeypatch.setattr(images, "BASE_DIR", copy)
    assert images.base_tag() == tag  # same recipe, same tag
    (copy / "packages.txt").write_text((copy / "packages.txt").read_text() + "curl\n")
    assert images.base_tag() != tag
    assert "curl" in images.base_packages() and "python3-pytest" in images.base_packages()


def test_other_recipes_share_the_setup_and_bad_names_are_refused():
    ruby = images.base_tag("base-ruby")
    assert ruby.startswith("swe-aem/base-ruby:") and ruby.split(":")[1] != images.base_tag().split(":")[1]
    assert "ruby" in images.base_packages("base-ruby") and "ruby" not in images.base_packages()
    for bad in ("local", "../base", "base-nope"):
        with pytest.raises(ValueError, match="no base image recipe"):
            images.base_tag(bad)


def test_debian_mirror_is_a_url():
    assert images.debian_mirror().startswith(("http://", "https://"))


@pytest.mark.slow
@pytest.mark.docker
def test_builds_are_skipped_when_up_to_date(docker_client, local_instances, capsys):
    start = time.monotonic()
    assert images.build_base(docker_client) == images.base_tag()
    assert build_local_suite(docker_client) == []  # every tag exists: nothing rebuilt
    assert time.monotonic() - start < 30
    progress = capsys.readouterr().err  # off a terminal: one timestamped line per stage
    assert "is up to date" in progress and "repo 3/3 swe-aem/textkit: up to date" in progress
    assert "local suite: done (0 image(s) built)" in progress
    for inst in local_instances:
        labels = docker_client.images.get(inst.image).labels
        assert labels["swe-aem.base-commit"] == inst.base_commit


@pytest.mark.slow
@pytest.mark.docker
def test_instance_images_hold_only_the_base_commit(local_instances, sandbox_pool):
    def check(inst):
        with sandbox_pool.sandbox(inst) as sb:
            head = sb.exec("git rev-parse HEAD; git rev-list --all --count; git status --porcelain; "
                           "stat -c %U /testbed; whoami").output.split()
            assert head == [inst.base_commit, "1", "swe", "swe"], head
            # no gold patch and no hidden tests inside: both apply forwards, neither in reverse
            sb.write_file("/tmp/gold.diff", inst.patch)
            sb.write_file("/tmp/test.diff", inst.test_patch)
            assert sb.exec("git apply --check /tmp/gold.diff && git apply --check /tmp/test.diff").exit_code == 0
            for diff in ("/tmp/gold.diff", "/tmp/test.diff"):
                assert sb.exec(f"git apply --check --reverse {diff}").exit_code != 0, inst.instance_id
            # nor are the F2P tests satisfied already
            sb.exec("git apply /tmp/test.diff")
            files = " ".join(sorted({t.split("::")[0] for t in inst.FAIL_TO_PASS}))
            hidden = sb.exec(f"python3 -m pytest -q -p no:cacheprovider {files}", timeout=120)
            assert hidden.exit_code == 1 and " failed" in hidden.output
            sb.exec("git checkout -q -- . && git clean -fdq")
            # the repo's own tests run offline with what the image has
            run = sb.exec("python3 -m pytest -q -p no:cacheprovider", timeout=120)
            assert run.exit_code == 0 and " passed" in run.output, run.output[-500:]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, local_instances))


@pytest.mark.slow
@pytest.mark.docker
def test_pull_without_a_registry_says_so_per_image(docker_client, local_instances, tmp_path, capsys):
    # a real instance's 5.x row twice: under an official name (not here) and its own (here)
    row = local_instances[0].to_swebench()
    rows = [{**row, "instance_id": "django__django-11099",
             "image": "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"},
            {**row, "instance_id": "x__y-1"}]
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parser = __import__("argparse").ArgumentParser()
    images_cmd.add_arguments(parser)
    start = time.monotonic()
    code = images_cmd.run(parser.parse_args(["pull", "--dataset", str(dataset), "--timeout", "60"]))
    assert time.monotonic() - start < 90
    assert code == 1
    results = json.loads(capsys.readouterr().out)
    assert results[local_instances[0].image] == "present"
    official = results["swebench/sweb.eval.x86_64.django_1776_django-11099:latest"]
    assert official.startswith("cannot pull")


def test_ensure_docker_reports_an_unreachable_engine():
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "DOCKER_HOST": "tcp://127.0.0.1:9", "DOCKER_WAIT_S": "2"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure_docker.sh")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "ERROR: remote engine DOCKER_HOST=tcp://127.0.0.1:9 does not answer" in done.stderr


@pytest.mark.docker
def test_ensure_docker_is_quiet_when_the_engine_answers(docker_client):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ensure_docker.sh")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "engine answers" in done.stdout
    assert host_label(None).startswith(("unix://", "tcp://", "ssh://"))

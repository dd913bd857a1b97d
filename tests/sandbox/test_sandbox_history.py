"""The git-history guard on real images: the agent's sandbox finds no commit beyond the task's base.

One image is built here FROM the textkit instance's image (content-hash tag, so a second
run reuses it): its repository holds the gold fix as a later commit on another branch, two
tags, a remote-tracking ref, a note, a stash, a detached commit left only in the reflog,
and the family's style of a baked-in patch file. The agent's shell (a real sandbox of the
pool) must find none of it by any git command, the grader (a fresh container of the
original image) must still resolve the gold patch, and the local and generated suites'
images must pass the check as they are (one commit, same image id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile

import pytest

from swe_aem.sandbox import history
from swe_aem.sandbox.image_store import image_exists

pytestmark = [pytest.mark.docker]

# As the image's own user, in the repository: the future, every way git keeps it.
LEAKY = """FROM {base}
COPY --chown=1000:1000 gold.diff /tmp/gold.diff
RUN set -e; cd /testbed; b=$(git symbolic-ref --short HEAD); \\
    export GIT_AUTHOR_NAME=dev GIT_AUTHOR_EMAIL=dev@example.invalid GIT_COMMITTER_NAME=dev \\
      GIT_COMMITTER_EMAIL=dev@example.invalid GIT_AUTHOR_DATE='2001-01-01T00:00:00' \\
      GIT_COMMITTER_DATE='2001-01-01T00:00:00'; \\
    git checkout -q -b future; git apply /tmp/gold.diff; git commit -qam 'the fix'; \\
    git tag v9.9; git tag -a v9.9-annotated -m 'release with the fix'; \\
    git notes add -m 'the fix is on branch future'; \\
    git remote add origin https://example.invalid/textkit.git; \\
    git update-ref refs/remotes/origin/main future; \\
    git checkout -q "$b"; git checkout -q --detach; git apply /tmp/gold.diff; \\
    git commit -qam 'the fix, again, detached'; git checkout -q "$b"; \\
    git apply /tmp/gold.diff; git stash -q; git status --porcelain | grep -q . && exit 1; \\
    cp /tmp/gold.diff /tmp/fix.patch; rm /tmp/gold.diff
"""
FIX_PATCH = "/tmp/fix.patch"  # as Multi-SWE-bench bakes /home/fix.patch into its images


def _added_line(patch: str) -> str:
    """A line the gold patch adds (its text is the fix)."""
    return next(line[1:].strip() for line in patch.splitlines()
                if line.startswith("+") and not line.startswith("+++") and len(line.strip()) > 12)


@pytest.fixture(scope="module")
def leaky(docker_client, local_instance):
    """(instance on the leaky image, the fix commit): built once, tag = hash of its recipe."""
    text = LEAKY.format(base=docker_client.images.get(local_instance.image).id)
    tag = "swe-aem/test-leaky-textkit:" + hashlib.sha256(
        (text + local_instance.patch).encode()).hexdigest()[:12]
    if not image_exists(docker_client, tag):
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, body in (("Dockerfile", text), ("gold.diff", local_instance.patch)):
                data = body.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        context.seek(0)
        docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                   forcerm=True, network_mode="none", pull=False)
    box = docker_client.containers.run(tag, ["git", "-C", "/testbed", "rev-parse", "future"], remove=True,
                                      network_mode="none")
    fix = box.decode().strip()
    inst = dataclasses.replace(local_instance, image=tag, gold_commit=fix,
                               history_remove_paths=(FIX_PATCH,))
    return inst, fix


AGENT_COMMANDS = ["git log --all --oneline", "git log --all -p", "git reflog", "git stash list",
                  "git stash show -p", "git tag", "git branch -a", "git remote -v", "git notes list",
                  "git fsck --lost-found; ls .git/lost-found/*/ 2>/dev/null | xargs -r cat",
                  "git rev-list --all --reflog", "git for-each-ref",
                  "git cat-file --batch-all-objects --batch", "cat /tmp/fix.patch"]


@pytest.mark.slow
def test_agent_finds_no_future_and_gold_still_resolves(leaky, sandbox_pool, docker_client, local_instance):
    from swe_aem.reward import grade_patch

    inst, fix = leaky
    line = _added_line(inst.patch)
    rules = history.rules_for(inst, "/testbed")
    # the original image holds the fix every way listed, and the full check sees each of them
    found = " | ".join(history.check_image(docker_client, inst.image, rules, "full"))
    for what in ("remote(s) origin", "reachable from a ref or the reflog", "outside HEAD's ancestry",
                 f"gold commit {fix}", f"file {FIX_PATCH}", "unreachable object"):
        assert what in found, found
    with sandbox_pool.sandbox(inst, shell_env=False) as grader_box:  # what a grader sees: everything
        out = grader_box.exec("; ".join(AGENT_COMMANDS)).output
        assert fix in out and line in out
    with sandbox_pool.sandbox(inst) as agent:  # the agent's shell
        assert agent.exec("git rev-parse HEAD; whoami; pwd; git status --porcelain").output.split() == \
            [inst.base_commit, "swe", "/testbed"]
        assert agent.exec(f"git show {fix}").exit_code != 0
        assert agent.exec(f"git cat-file -e {fix}").exit_code != 0
        assert agent.exec("git rev-list --all --reflog --count").output.strip() == "1"
        for cmd in AGENT_COMMANDS:
            out = agent.exec(cmd, output_limit_bytes=8 << 20).output
            assert fix not in out and fix[:7] not in out and line not in out, (cmd, out[-500:])
        assert agent.exec("git stash list; git tag; git notes list 2>/dev/null; git remote").output.strip() == ""
        agent.write_file("textkit/new.txt", "x\n")  # the agent can still work with git
        assert "textkit/new.txt" in agent.diff()
        image = agent.container.image
    derived = docker_client.images.get(history.guarded_image(docker_client, inst.image, rules))
    assert image.id == derived.id != docker_client.images.get(inst.image).id
    assert derived.labels[history.LABEL_SCRUBBED_FROM] == docker_client.images.get(inst.image).id
    # grading runs in a fresh container of the original image, as the harnesses do
    gold = grade_patch(inst, inst.patch, pool=sandbox_pool, timeout=300)
    assert (gold.status, gold.reward) == ("resolved", 1.0), gold.reason
    assert grade_patch(inst, "", pool=sandbox_pool, timeout=300).reward == 0.0


@pytest.mark.slow
def test_a_leak_at_start_is_an_infrastructure_error_naming_the_image(leaky, docker_client):
    from swe_aem.sandbox import SandboxPool

    inst, _ = leaky
    # a cache entry that is not scrubbed (the derived tag put on the leaky image): the check at
    # start must refuse it, whatever the cache says
    poisoned = dataclasses.replace(inst, gold_commit="0" * 40)
    rules = history.rules_for(poisoned, "/testbed")
    original = docker_client.images.get(inst.image)
    repo, tag = history.derived_tag(inst.image, original.id, rules).rsplit(":", 1)
    docker_client.api.tag(original.id, repo, tag)
    try:
        with SandboxPool(max_concurrency=1, run_id="pytest-history") as pool:
            with pytest.raises(history.HistoryLeakError) as err, pool.sandbox(poisoned):
                pass
            assert sum(pool.active().values()) == 0
    finally:
        docker_client.images.remove(f"{repo}:{tag}")
    text = str(err.value)
    assert inst.image in text and "remote(s) origin" in text and "outside HEAD's ancestry" in text


@pytest.mark.slow
def test_local_and_generated_suites_keep_their_one_commit_history(local_instances, docker_client):
    from swe_aem.data import load_instances

    generated = load_instances("generated", split="test")[:1]
    for inst in [*local_instances, *generated]:
        if not image_exists(docker_client, inst.image):
            pytest.skip(f"{inst.image} not built (swe-aem images build)")
        rules = history.rules_for(inst, "/testbed")
        guarded = history.guarded_image(docker_client, inst.image, rules)
        assert guarded != inst.image
        assert docker_client.images.get(guarded).id == docker_client.images.get(inst.image).id, inst.instance_id
        assert history.check_image(docker_client, guarded, rules, "full") == []


def test_derived_tags_are_content_hashes():
    rules = history.GuardRules(workdir="/app", base_commit="a" * 40)
    one = history.derived_tag("jefzda/sweap-images:" + "x" * 128, "sha256:1", rules)
    assert one.startswith("jefzda/sweap-images:nohist-") and len(one.split(":")[1]) <= 128
    assert one == history.derived_tag("jefzda/sweap-images:other", "sha256:1", rules)  # by id
    assert one != history.derived_tag("jefzda/sweap-images:x", "sha256:2", rules)
    assert one != history.derived_tag("jefzda/sweap-images:x", "sha256:1",
                                      dataclasses.replace(rules, gold_commit="b" * 40))
    assert history.derived_tag("localhost:5000/a/b", "i", rules).startswith("localhost:5000/a/b:nohist-")
    assert history.parse_leaks("x\nLEAK one\nLEAKY\nLEAK two\n") == ["one", "two"]
    with pytest.raises(ValueError, match="must be absolute"):
        history.rules_for(type("S", (), {"history_remove_paths": ("fix.patch",)})(), "/app")

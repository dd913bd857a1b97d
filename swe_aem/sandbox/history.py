"""The git-history guard: the agent's sandbox holds nothing of its repository beyond the task's base.

Pulled task images keep the future: SWE-rebench (V1, V2) and Multi-SWE-bench images hold
tags, branches, reflog entries and packed objects from after the base commit, SWE-bench
Pro images hold the gold commit itself (its eval checks the gold tests out of it), and an
agent finds the fix with `git log --all` or `git show <hash>` (mini-swe-agent#787: 21 of
100 SWE-bench Pro tasks). Under RL that is exactly what gets rewarded, so the agent's
sandbox never starts from such an image:

- `guarded_image` derives, once per (image, task base, rules), an image whose repository
  keeps only the commit the task starts from and its ancestry: the remotes, every ref but
  one branch at that commit (or a detached HEAD), the reflog, stashes, notes, replace refs,
  worktrees, alternates and every unreachable object gone, submodules' git dirs scrubbed
  the same way, and the family's baked-in patch files removed. Its tag is a content hash
  of the original image's id and the scrub, so it is built once and found again by any
  process; it is an image like any other on the daemon, so the image store's disk budget
  counts it. An image that is already clean (the local and generated suites: one commit)
  is only tagged under the derived name: same image id, history untouched, no disk.
- `check_sandbox` runs the cheap half of the check in every agent sandbox before the agent
  sees it; a leak raises `HistoryLeakError` (a SandboxError: an infrastructure failure of
  the episode, naming the image), never a silent pass.

The check reads the commit graph, not timestamps (a cherry-pick or a skewed clock lies
about dates): no commit reachable from any ref or reflog outside HEAD's ancestry, no commit
object in the store (packed, loose, unreachable, in an alternate) outside it, no remote,
alternate or linked worktree, the gold commit absent where the task knows it. The full
check, run once when an image is derived, also asks `git fsck` for unreachable objects of
any kind (a dangling blob of the fixed file is as good as a commit).

Only the agent's sandbox is guarded. Graders run in a fresh container of the original
image, as the harnesses do (SWE-bench Pro's eval checks the gold test files out of the
gold commit, which the derived image no longer holds).
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
import threading
from dataclasses import dataclass

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from swe_aem.sandbox.daemon import LABEL_MANAGED, SandboxError

# Every git call of the scripts trusts the repository whoever owns it (git >= 2.35 refuses
# a repository owned by another user; the scrub runs as root, the check as the image's
# user), takes no optional locks and ignores a repository location set in the environment.
_PRELUDE = r"""
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*' GIT_OPTIONAL_LOCKS=0
unset GIT_DIR GIT_WORK_TREE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_INDEX_FILE
leak() { echo "LEAK $*"; }
"""

# check MODE WORKDIR GOLD [PATH...]: prints one "LEAK ..." line per finding; exit 4 when
# there is no repository to check. MODE "full" adds git fsck's unreachable objects.
CHECK_SCRIPT = _PRELUDE + r"""
check_repo() {  # $1: git dir, $2: what to call it
  g=$1; what=$2
  head=$(git --git-dir="$g" rev-parse -q --verify 'HEAD^{commit}') || { leak "$what: HEAD names no commit"; return; }
  r=$(git --git-dir="$g" remote | tr '\n' ' ')
  [ -z "$r" ] || leak "$what: remote(s) $r"
  if [ -s "$g/objects/info/alternates" ]; then leak "$what: alternate object store(s) $(tr '\n' ' ' <"$g/objects/info/alternates")"; fi
  if [ -d "$g/worktrees" ] && [ -n "$(ls -A "$g/worktrees")" ]; then leak "$what: linked worktree(s) $(ls "$g/worktrees" | tr '\n' ' ')"; fi
  if beyond=$(git --git-dir="$g" rev-list --all --reflog --not "$head" 2>&1); then
    [ -z "$beyond" ] || leak "$what: $(echo "$beyond" | wc -l) commit(s) outside HEAD's ancestry reachable from a ref or the reflog: $(echo "$beyond" | head -n 3 | tr '\n' ' ')"
  else
    leak "$what: the refs and reflog cannot be walked: $(echo "$beyond" | head -n 2 | tr '\n' ' ')"
  fi
  t=$(mktemp -d)
  git --git-dir="$g" cat-file --batch-all-objects --batch-check='%(objecttype) %(objectname)' | sed -n 's/^commit //p' | sort >"$t/all"
  git --git-dir="$g" rev-list "$head" | sort >"$t/ancestry"
  comm -23 "$t/all" "$t/ancestry" >"$t/extra"
  if [ -s "$t/extra" ]; then leak "$what: $(wc -l <"$t/extra") commit object(s) outside HEAD's ancestry (unreachable, stashed or on another ref): $(head -n 3 "$t/extra" | tr '\n' ' ')"; fi
  rm -rf "$t"
  if [ "$mode" = full ]; then
    u=$(git --git-dir="$g" fsck --unreachable --no-reflogs --no-progress --connectivity-only 2>/dev/null | grep '^unreachable ')
    [ -z "$u" ] || leak "$what: $(echo "$u" | wc -l) unreachable object(s): $(echo "$u" | head -n 3 | tr '\n' ' ')"
  fi
}
mode=$1; workdir=$2; gold=$3; shift 3
cd "$workdir" 2>/dev/null || { echo "NOREPO: no directory $workdir"; exit 4; }
gd=$(git rev-parse --absolute-git-dir 2>/dev/null) || { echo "NOREPO: no git repository in $workdir"; exit 4; }
check_repo "$gd" "repository $workdir"
if [ -d "$gd/modules" ]; then
  for h in $(find "$gd/modules" -name HEAD -type f); do
    d=$(dirname "$h"); [ -d "$d/objects" ] && check_repo "$d" "submodule git dir ${d#"$gd/"}"
  done
fi
if [ -n "$gold" ] && git cat-file -e "$gold^{commit}" 2>/dev/null; then leak "the gold commit $gold is in the object store"; fi
for p in "$@"; do if [ -e "$p" ]; then leak "file $p is in the image"; fi; done
exit 0
"""

# scrub WORKDIR BASE GOLD [PATH...]: the repository keeps the task's commit and its
# ancestry only, then the full check must find nothing (exit 3 otherwise).
SCRUB_SCRIPT = _PRELUDE + r"""
set -eu
scrub_repo() {  # $1: git dir, $2: commit to keep, $3: branch to keep at it ("" = detached)
  g=$1; keep=$2; branch=$3
  for r in $(git --git-dir="$g" remote); do git --git-dir="$g" remote remove "$r"; done
  git --git-dir="$g" update-ref --no-deref HEAD "$keep"
  git --git-dir="$g" for-each-ref --format='delete %(refname)' | git --git-dir="$g" update-ref --stdin
  if [ -n "$branch" ]; then
    git --git-dir="$g" update-ref "refs/heads/$branch" "$keep"
    git --git-dir="$g" symbolic-ref HEAD "refs/heads/$branch"
  fi
  rm -rf "$g/logs" "$g/worktrees" "$g/refs/original" "$g/rr-cache" "$g/lost-found" "$g/rebase-merge" "$g/rebase-apply"
  for f in FETCH_HEAD ORIG_HEAD MERGE_HEAD MERGE_MSG SQUASH_MSG CHERRY_PICK_HEAD REVERT_HEAD AUTO_MERGE \
           COMMIT_EDITMSG BISECT_LOG BISECT_START BISECT_EXPECTED_REV BISECT_NAMES BISECT_TERMS info/refs packed-refs.lock; do
    rm -f "$g/$f"
  done
  if [ -s "$g/objects/info/alternates" ]; then  # copy what HEAD needs in, then drop the link
    git --git-dir="$g" repack -a -d -q
    rm -f "$g/objects/info/alternates"
  fi
  rm -f "$g"/objects/pack/*.keep "$g"/objects/pack/*.promisor
  git --git-dir="$g" reflog expire --expire=now --expire-unreachable=now --all
  git --git-dir="$g" -c gc.pruneExpire=now -c gc.worktreePruneExpire=now -c gc.cruftPacks=false -c gc.autoDetach=false gc --prune=now -q
  git --git-dir="$g" prune --expire=now
}
workdir=$1; base=$2; gold=$3; shift 3
cd "$workdir"
gd=$(git rev-parse --absolute-git-dir)
owner=$(stat -c %u:%g "$gd")
head=$(git rev-parse --verify 'HEAD^{commit}')
keep=$head
if [ -n "$base" ] && git cat-file -e "$base^{commit}" 2>/dev/null && ! git merge-base --is-ancestor "$base" "$head"; then
  # the task's commit lies off HEAD (SWE-smith: a branch per task): the task starts there
  keep=$(git rev-parse "$base^{commit}")
  git checkout -q -f --detach "$keep"
  chown -R "$owner" "$workdir"
fi
branch=$(git symbolic-ref -q --short HEAD || true)
scrub_repo "$gd" "$keep" "$branch"
if [ -d "$gd/modules" ]; then
  for h in $(find "$gd/modules" -name HEAD -type f); do
    d=$(dirname "$h")
    if [ -d "$d/objects" ]; then scrub_repo "$d" "$(git --git-dir="$d" rev-parse --verify 'HEAD^{commit}')" ""; fi
  done
fi
for p in "$@"; do rm -rf "$p"; done
chown -R "$owner" "$gd"
"""

CHECK_TIMEOUT_S = 300.0
DERIVED_PREFIX = "nohist-"
LABEL_SCRUBBED_FROM = "swe-aem.history-scrubbed-from"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class HistoryLeakError(SandboxError):
    """An agent's image holds repository history beyond the task's base (an infrastructure error)."""


@dataclass(frozen=True)
class GuardRules:
    """What the guard needs of a task: where its repository is, the commit it starts from,
    the gold commit where known ("" unknown) and files to remove (a family's baked-in patches)."""

    workdir: str
    base_commit: str = ""
    gold_commit: str = ""
    remove_paths: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """SCRUB_SCRIPT's arguments."""
        return [self.workdir, self.base_commit, self.gold_commit, *self.remove_paths]

    def check_args(self) -> list[str]:
        """CHECK_SCRIPT's arguments after its mode."""
        return [self.workdir, self.gold_commit, *self.remove_paths]


def rules_for(spec: object, workdir: str) -> GuardRules:
    """The rules of a sandbox spec: its base_commit, and `gold_commit` / `history_remove_paths`
    where the spec has them (swe_aem.data's Instance does)."""
    paths = tuple(getattr(spec, "history_remove_paths", ()) or ())
    relative = [p for p in paths if not p.startswith("/")]
    if relative:  # a relative path would depend on the container's working directory
        raise ValueError(f"history guard paths must be absolute: {', '.join(relative)}")
    return GuardRules(workdir=workdir, base_commit=str(getattr(spec, "base_commit", "") or ""),
                      gold_commit=str(getattr(spec, "gold_commit", "") or ""), remove_paths=paths)


def parse_leaks(output: str) -> list[str]:
    """The findings of CHECK_SCRIPT's output ("LEAK ..." lines), in order."""
    return [line[5:].strip() for line in output.splitlines() if line.startswith("LEAK ")]


def check_command(rules: GuardRules, mode: str = "quick") -> str:
    """The shell command that runs the check in a container (any user, any POSIX sh)."""
    if mode not in ("quick", "full"):
        raise ValueError(f"check mode {mode!r}: quick or full")
    return " ".join(["sh", "-c", shlex.quote(CHECK_SCRIPT), "sh", mode,
                     *(shlex.quote(a) for a in rules.check_args())])


def derived_tag(image: str, image_id: str, rules: GuardRules) -> str:
    """`<repository of image>:nohist-<hash>`: the hash of the original's id, the scripts and the
    rules; the repository name is kept, so the store evicts a derived image as its original."""
    digest = hashlib.sha256()
    for part in (image_id, SCRUB_SCRIPT, CHECK_SCRIPT, *rules.args()):
        digest.update(part.encode())
        digest.update(b"\0")
    return f"{_repository(image)}:{DERIVED_PREFIX}{digest.hexdigest()[:16]}"


def _repository(image: str) -> str:
    if "@" in image:
        return image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image.rsplit(":", 1)[0] if ":" in last else image


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def check_image(client: docker.DockerClient, image: str, rules: GuardRules, mode: str = "full") -> list[str]:
    """Run the check in a throwaway container of `image` (root, no network, its entrypoint
    bypassed); the findings. Raises SandboxError when the check itself cannot run."""
    container = client.containers.create(image, entrypoint=["/bin/sh", "-c", check_command(rules, mode)],
                                         command=[], user="root", network_mode="none",
                                         labels={LABEL_MANAGED: "1"})
    try:
        container.start()
        code = container.wait(timeout=CHECK_TIMEOUT_S).get("StatusCode")
        output = container.logs().decode("utf-8", errors="replace")
    finally:
        container.remove(force=True)
    if code != 0:
        raise SandboxError(f"the git-history check could not run in image {image} "
                           f"(exit {code}): {output.strip()[-800:]}")
    return parse_leaks(output)


def guarded_image(client: docker.DockerClient, image: str, rules: GuardRules) -> str:
    """The agent's image for a task of `image` (present on the daemon): the derived tag,
    made once (see the module's docstring). Raises HistoryLeakError when a scrub leaves a
    leak, SandboxError when it cannot run."""
    try:
        original = client.images.get(image)
    except ImageNotFound as exc:
        raise SandboxError(f"image {image} is not on the Docker daemon") from exc
    tag = derived_tag(image, original.id, rules)
    with _lock(tag):
        try:
            client.images.get(tag)
            return tag
        except ImageNotFound:
            pass
        repository, version = tag.rsplit(":", 1)
        if not check_image(client, image, rules, "full"):
            client.api.tag(original.id, repository, version)  # clean already: same image, a second name
            return tag
        _build_scrubbed(client, image, original, tag, rules)
    return tag


def _build_scrubbed(client: docker.DockerClient, image: str, original, tag: str, rules: GuardRules) -> None:
    user = (original.attrs.get("Config") or {}).get("User") or "root"
    args = " ".join(shlex.quote(a) for a in rules.args())
    check_args = " ".join(shlex.quote(a) for a in ["full", *rules.check_args()])
    dockerfile = "\n".join([
        f"FROM {original.id}", "USER root", "COPY scrub.sh check.sh /tmp/swe-aem-history/",
        # the scrub, then the full check: a finding fails the build, its lines in the log
        (f"RUN sh /tmp/swe-aem-history/scrub.sh {args} && "
         f"sh /tmp/swe-aem-history/check.sh {check_args} >/tmp/swe-aem-history/found && "
         "if grep -q '^LEAK ' /tmp/swe-aem-history/found; then cat /tmp/swe-aem-history/found; exit 3; fi && "
         "rm -rf /tmp/swe-aem-history"),
        f"USER {user}", f'LABEL {LABEL_SCRUBBED_FROM}="{original.id}"', ""])
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", dockerfile), ("scrub.sh", SCRUB_SCRIPT), ("check.sh", CHECK_SCRIPT)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    try:
        client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                            network_mode="none", pull=False)
    except BuildError as exc:
        log = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)[-1500:]
        kind = HistoryLeakError if "LEAK " in log else SandboxError
        raise kind(f"scrubbing the git history of image {image} failed: {exc.msg}\n{log}") from exc
    except APIError as exc:
        raise SandboxError(f"scrubbing the git history of image {image} failed: {exc}") from exc


def check_sandbox(sandbox, image: str, rules: GuardRules) -> None:
    """The check at every start, in the agent's own sandbox (its user, before the agent):
    raises HistoryLeakError naming `image` on any finding."""
    done = sandbox.exec(check_command(rules, "quick"), timeout=CHECK_TIMEOUT_S, workdir="/")
    leaks = parse_leaks(done.output)
    if done.exit_code != 0 or done.timed_out:
        raise SandboxError(f"the git-history check could not run in the sandbox of image {image} "
                           f"(exit {done.exit_code}): {done.output.strip()[-800:]}")
    if leaks:
        raise HistoryLeakError(
            f"image {image}: the agent's sandbox holds git history beyond the task's base "
            f"({len(leaks)} finding(s)): " + "; ".join(leaks[:5])
            + ". Not starting the agent: it could read the fix from git.")

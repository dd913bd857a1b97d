"""str_replace_editor for images without python3: the container's files reached from the host.

The editor is swe_aem.agent.sandbox_editor.run, one implementation; in a container with
python3 it runs there and reaches files with that Python. Images without it (Go, Java, JS
and C images often lack it) get `DockerFiles`: the same primitives done through the
Docker API, so the observations are the same texts either way (the policy was trained on
them). A file is read and written as a one-file tar (GET and PUT of the container's
archive), a path is resolved as os.path.realpath resolves it, from the daemon's lstat of
each component (a HEAD of the archive: ~1 ms, where a tar round trip costs the daemon
~50 ms each way), and a directory's view comes from a `find` in the container.

What the container's Python would learn from the kernel, this module decides as the
sandbox user would be treated: a file keeps its mode and owner; a new file is the user's
with mode 0644 and its new directories 0755 (umask 022, Docker's default); a file the user
may not read or write (its owner, group and mode bits from the tar header), a directory
it may not create in (`test -w` in the container, for a user other than root), a missing
parent or a file in the way raise the OSError that Python would have raised, with the
same errno and file name, so the "ERROR: [Errno 13] Permission denied: '...'" text is the
same. The undo history lives in the tool runner (one sandbox per episode), not in the
container.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import posixpath
import shlex
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import requests
from docker.errors import DockerException, NotFound

from swe_aem.agent.sandbox_editor import decode, encode, run
from swe_aem.sandbox import Sandbox, SandboxError
from swe_aem.sandbox.daemon import retry_transient
from swe_aem.sandbox.sandbox import _CappedBuffer

_MODE_DIR = 1 << 31  # Go's os.ModeDir, as the archive API's stat reports a mode
_MODE_SYMLINK = 1 << 27  # Go's os.ModeSymlink
_NEW_FILE_MODE, _NEW_DIR_MODE = 0o644, 0o755
_READ, _WRITE = 4, 2  # permission bits of one class (owner, group, other)
# what os.walk(P) yields, read in one exec: every entry two directory levels down (hidden
# ones pruned, symlinks not followed), an empty entry, then those that are directories to
# os.walk (is_dir() follows a symlink)
_WALK = ("find {p} -mindepth 1 -maxdepth 3 -name '.*' -prune -o -print0 2>/dev/null; printf '\\0'; "
         "find -L {p} -mindepth 1 -maxdepth 3 -name '.*' -prune -o -type d -print0 2>/dev/null; true")
_WALK_OUTPUT_LIMIT = 64 << 20

T = TypeVar("T")


def edit(sandbox: Sandbox, arguments: dict, history: dict[str, list[str]]) -> tuple[bool, str]:
    """(ok, observation) of one str_replace_editor call in `sandbox`, done from the host.

    `history` holds the undo stacks of the sandbox's files (keep one per sandbox across
    calls). The observation is what the in-container editor's exec would hand back: its
    bytes capped at the sandbox's output limit, decoded with replacement.
    """
    files = DockerFiles(sandbox, history)
    files.check_running()
    ok, observation = run(arguments, sandbox.config.workdir, files)
    capped = _CappedBuffer(sandbox.config.output_limit_bytes)
    capped.add(encode(observation))
    return ok, capped.text()[0]


def _oserror(cls: type[OSError], code: int, path: str) -> OSError:
    return cls(code, os.strerror(code), path)


class DockerFiles:
    """The file primitives sandbox_editor.run needs, on a sandbox's container through the
    Docker API, as its user. One object per editor call: it keeps what the daemon said
    about paths during that call (nothing of it can change before the call writes)."""

    def __init__(self, sandbox: Sandbox, history: dict[str, list[str]]) -> None:
        self.sandbox = sandbox
        self.container = sandbox.container
        self.history = history
        self._stats: dict[str, dict | None] = {}  # lstat answers of this call
        self._members: dict[str, tarfile.TarInfo] = {}  # tar headers of the files read
        self._planned: tuple[str, list[str]] | None = None  # makedirs: (existing parent, new dirs)

    # ------------------------------------------------------------------ the daemon
    def _api(self, what: str, call: Callable[[], T]) -> T:
        try:
            return retry_transient()(call)()
        except (DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise SandboxError(f"container {self.container.name}: {what} through the Docker API failed "
                               f"({type(exc).__name__}: {exc})") from exc

    def check_running(self) -> None:
        """SandboxError unless the container runs: the archive API would still reach the
        files of a stopped one, where an exec (and so the in-container editor) fails."""
        self._api("inspecting it", self.container.reload)
        state = self.container.attrs.get("State", {})
        if state.get("Status") != "running":
            raise SandboxError(f"container {self.container.name} is {state.get('Status')} (exit code "
                               f"{state.get('ExitCode')}, OOMKilled={state.get('OOMKilled')}) when the editor ran")

    def _lstat(self, path: str) -> dict | None:
        """The daemon's stat of `path` (the last component not followed; its linkTarget, for a
        symlink, resolved in the container), or None where nothing can be found there."""
        if path not in self._stats:
            api = self.container.client.api
            url = f"{api.base_url}/v{api.api_version}/containers/{self.container.id}/archive"
            answer = self._api(f"a stat of {path}", lambda: api.head(url, params={"path": path},
                                                                          timeout=api.timeout))
            header = answer.headers.get("X-Docker-Container-Path-Stat") if answer.status_code == 200 else None
            self._stats[path] = json.loads(base64.b64decode(header)) if header else None
        return self._stats[path]

    def _fetch(self, path: str) -> tuple[bytes, tarfile.TarInfo]:
        """The bytes of file `path` and its tar header (mode, owner)."""
        def get() -> bytes | None:
            try:
                chunks, _ = self.container.get_archive(path)
            except NotFound:  # gone since its stat (the container runs: checked first)
                return None
            return b"".join(chunks)

        blob = self._api(f"reading {path}", get)
        member, data = None, b""
        if blob is not None:
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member is not None and member.isfile() else None
                data = handle.read() if handle else b""
        if member is None:
            raise _oserror(FileNotFoundError, errno.ENOENT, path)
        return data, member

    def _put(self, base: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if not self._api(f"writing in {base}", lambda: self.container.put_archive(base, archive.getvalue())):
            raise SandboxError(f"container {self.container.name}: writing in {base} was refused")

    # ------------------------------------------------------------------ as the sandbox user
    def _permits(self, member: tarfile.TarInfo, bit: int) -> bool:
        """Whether the sandbox user may read (bit 4) or write (bit 2) the file of `member`."""
        uid, gid = self.sandbox.uid, self.sandbox.gid
        if uid == 0:
            return True
        shift = 6 if member.uid == uid else 3 if member.gid == gid else 0
        return bool(member.mode >> shift & bit)

    def _may_create_in(self, directory: str) -> bool:
        if self.sandbox.uid == 0:
            return True
        quoted = shlex.quote(directory)
        return self.sandbox.exec(f"test -w {quoted} && test -x {quoted}", timeout=30,
                                 workdir="/").exit_code == 0

    def _new(self, name: str, directory: bool = False, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        if directory:
            info.type, info.mode = tarfile.DIRTYPE, _NEW_DIR_MODE
        else:
            info.size, info.mode = size, _NEW_FILE_MODE
        info.uid, info.gid, info.mtime = self.sandbox.uid, self.sandbox.gid, time.time()
        return info

    # ------------------------------------------------------------------ the primitives
    def realpath(self, path: str) -> str:
        """os.path.realpath in the container: each component looked up in turn (one HEAD
        each); a symlink is replaced by its target, which the daemon resolves whole."""
        resolved = "/"
        for name in path.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                resolved = posixpath.dirname(resolved)
                continue
            candidate = posixpath.join(resolved, name)
            stat = self._lstat(candidate)
            if stat is not None and stat["mode"] & _MODE_SYMLINK and stat.get("linkTarget"):
                resolved = stat["linkTarget"]
            else:  # not a symlink, nothing there, or a symlink the daemon cannot resolve (a loop)
                resolved = candidate
        return resolved

    def kind(self, path: str) -> str | None:
        """"dir", "file" (anything else that exists) or None, of a resolved path (a symlink
        still there is a loop: os.path.exists says no)."""
        stat = self._lstat(path)
        if stat is None or stat["mode"] & _MODE_SYMLINK:
            return None
        return "dir" if stat["mode"] & _MODE_DIR else "file"

    def read(self, path: str) -> str:
        data, member = self._fetch(path)
        if not self._permits(member, _READ):
            raise _oserror(PermissionError, errno.EACCES, path)
        self._members[path] = member
        return decode(data)

    def write(self, path: str, text: str) -> None:
        """As `open(path, "w")` by the sandbox user: an existing file keeps its mode and owner;
        a new one needs its directory (made by `makedirs` just before, at the latest)."""
        data = encode(text)
        parent, name = posixpath.split(path)
        if self._planned is not None and self._planned[1][-1] == parent:
            base, dirs = self._planned  # the new directories and the file in one archive
            self._planned = None
            members: list[tuple[tarfile.TarInfo, bytes | None]] = [
                (self._new(posixpath.relpath(d, base), directory=True), None) for d in dirs]
            members.append((self._new(posixpath.relpath(path, base), size=len(data)), data))
            self._put(base, members)
            return
        kind = self.kind(path)
        if kind == "dir":
            raise _oserror(IsADirectoryError, errno.EISDIR, path)
        if kind == "file":
            member = self._members.get(path) or self._fetch(path)[1]
            if not self._permits(member, _WRITE):
                raise _oserror(PermissionError, errno.EACCES, path)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), member.mode & 0o7777, time.time()
            info.uid, info.gid = member.uid, member.gid
        else:
            where = self.kind(parent)
            if where is None:
                raise _oserror(FileNotFoundError, errno.ENOENT, path)
            if where != "dir":
                raise _oserror(NotADirectoryError, errno.ENOTDIR, path)
            if not self._may_create_in(parent):
                raise _oserror(PermissionError, errno.EACCES, path)
            info = self._new(name, size=len(data))
        self._put(parent, [(info, data)])

    def makedirs(self, path: str) -> None:
        """As os.makedirs(path, exist_ok=True); the directories are made with the next write."""
        missing = []
        at = path
        while at != "/" and self.kind(at) is None:
            missing.append(at)
            at = posixpath.dirname(at)
        if not missing:
            if self.kind(path) != "dir":
                raise _oserror(FileExistsError, errno.EEXIST, path)
            return
        first = missing[-1]  # the first mkdir, in `at`, the nearest thing that exists
        if self.kind(at) != "dir":
            raise _oserror(NotADirectoryError, errno.ENOTDIR, first)
        if not self._may_create_in(at):
            raise _oserror(PermissionError, errno.EACCES, first)
        self._planned = (at, missing[::-1])

    def walk(self, path: str) -> Iterator[tuple[str, list[str], list[str]]]:
        """As os.walk(path) as far as the directory view reads it (two levels down)."""
        result = self.sandbox.exec(_WALK.format(p=shlex.quote(path)), timeout=120, workdir="/",
                                   output_limit_bytes=_WALK_OUTPUT_LIMIT)
        found = result.output.split("\0")
        cut = found.index("") if "" in found else len(found)
        dirs = set(found[cut + 1:])
        tree: dict[str, tuple[list[str], list[str]]] = {}
        for entry in found[:cut]:
            parent, name = posixpath.split(entry)
            files_here, dirs_here = tree.setdefault(parent, ([], []))
            (dirs_here if entry in dirs else files_here).append(name)
        return _walk(path, tree)

    def load_history(self, path: str) -> list[str]:
        return list(self.history.get(path, []))

    def save_history(self, path: str, stack: list[str]) -> None:
        self.history[path] = stack


def _walk(base: str, tree: dict[str, tuple[list[str], list[str]]]) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk's top-down order over `tree` (directory -> its files and directories): the
    caller's pruning of the yielded `dirs` decides where it goes on."""
    files, dirs = tree.get(base, ([], []))
    dirs = list(dirs)
    yield base, dirs, list(files)
    for name in dirs:
        yield from _walk(posixpath.join(base, name), tree)

"""str_replace_editor in an image without python3: the same observations, the same files.

The editor (swe_aem/agent/sandbox_editor.py) runs inside the container with python3 where
the image has it, else on the host over the Docker API (swe_aem/agent/docker_editor.py).
One repository, put at /testbed on the Python base image and on the Go one
(sandboxes/base-go, no python3), gets the same sequence of editor calls three ways: the
Python image with its in-container editor, the Go image (where the tool runner has to take
the Docker API), and the Python image through the Docker API too (the same container
contents, so any difference is the route's). Every observation and the resulting tree
(names, types, modes, owners, bytes) must be equal, and a few are checked for what they
say, so that the three do not agree on something wrong. The sequence covers each command
and each error: missing files, directories, paths outside /testbed and symlinks out of it,
non-UTF-8 and CRLF files, a view past the output limit, files and directories the
non-root user may not read or write, and undo.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest
from helpers import add_text

from swe_aem.agent import docker_editor
from swe_aem.agent.sandbox_editor import listing
from swe_aem.agent.tools import ToolRunner
from swe_aem.agent.trajectory import ToolCall
from swe_aem.sandbox import Sandbox
from swe_aem.sandbox.image_store import build_base, image_exists

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MAIN = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(6)) + "VALUE = 1\nVALUE = 1\n"
FILES: dict[str, str | bytes] = {
    "pkg/main.py": MAIN,
    "pkg/util.go": "package pkg\n\nfunc Add(a, b int) int {\n\treturn a + b\n}\n",
    "pkg/crlf.txt": "first\r\nsecond\r\nthird\r\n",
    "pkg/latin.txt": b"caf\xe9 = 1\nb = 2\n",
    "pkg/frozen.py": "frozen = True\n",
    "pkg/.env": "hidden file\n",
    ".hidden/secret.txt": "hidden directory\n",
    "deep/a/x.txt": "x\n",
    "deep/a/b/c.txt": "three levels down\n",
    "deep/a/b/c/d.txt": "four levels down: not listed\n",
    "big.txt": "".join(f"line {i} of a file longer than the output limit\n" for i in range(2000)),
    "locked/inside.txt": "writable file in a read-only directory\n",
}
# run as root before USER swe: modes and owners the user cannot change, symlinks of each kind
SETUP_STEPS = (
    "chmod 444 /testbed/pkg/frozen.py", "chmod 555 /testbed/locked",
    "mkdir /testbed/rootdir", "echo root > /testbed/rootdir/owned.txt", "echo secret > /testbed/rootdir/secret",
    "chmod 600 /testbed/rootdir/secret", "chmod 1777 /testbed/deep",
    "ln -s /etc /testbed/etc-link", "ln -s pkg/main.py /testbed/main-link.py", "ln -s pkg /testbed/pkg-link",
    "ln -s nowhere /testbed/dangling", "ln -s loop /testbed/loop",
)
SETUP = " && ".join(SETUP_STEPS)
DOCKERFILE = """FROM {base}
COPY --chown=1000:1000 testbed /testbed
RUN {setup}
USER swe
WORKDIR /testbed
"""

LONG_TEXT = "".join(f"created line {i}\n" for i in range(50))
CALLS: list[dict] = [
    {"command": "view", "path": "/testbed"},
    {"command": "view", "path": "/testbed/pkg/main.py"},
    {"command": "view", "path": "/testbed/pkg/main.py", "view_range": [2, 3]},
    {"command": "view", "path": "/testbed/pkg/main.py", "view_range": [17, -1]},
    {"command": "view", "path": "/testbed/pkg/main.py", "view_range": [15, 400]},
    {"command": "view", "path": "/testbed/pkg/main.py", "view_range": [90, 95]},
    {"command": "view", "path": "/testbed/pkg/main.py", "view_range": [1]},
    {"command": "view", "path": "/testbed/missing.py"},
    {"command": "view", "path": "/etc/passwd"},
    {"command": "view", "path": "relative.py"},
    {"command": "view", "path": "/testbed/../etc/passwd"},
    {"command": "view", "path": "/testbed/etc-link/passwd"},
    {"command": "view", "path": "/testbed/main-link.py", "view_range": [1, 2]},
    {"command": "view", "path": "/testbed/pkg-link"},
    {"command": "view", "path": "/testbed/./pkg/../pkg/util.go"},
    {"command": "view", "path": "/testbed/dangling"},
    {"command": "view", "path": "/testbed/loop"},
    {"command": "view", "path": "/testbed/pkg/latin.txt"},
    {"command": "view", "path": "/testbed/pkg/crlf.txt"},
    {"command": "view", "path": "/testbed/big.txt"},
    {"command": "view", "path": "/testbed/rootdir/secret"},
    {"command": "view", "path": "/testbed/rootdir/owned.txt"},
    {"command": "create", "path": "/testbed/new/sub/file.py", "file_text": "a = 1\nb = 2\n"},
    {"command": "create", "path": "/testbed/new/sub/file.py", "file_text": "again"},
    {"command": "create", "path": "/testbed/pkg", "file_text": "a directory"},
    {"command": "create", "path": "/testbed/long.txt", "file_text": LONG_TEXT},
    {"command": "create", "path": "/testbed/pkg/main.py/x.py", "file_text": "x"},
    {"command": "create", "path": "/testbed/pkg/main.py/a/x.py", "file_text": "x"},
    {"command": "create", "path": "/testbed/locked/new.py", "file_text": "x"},
    {"command": "create", "path": "/testbed/locked/sub/new.py", "file_text": "x"},
    {"command": "create", "path": "/testbed/rootdir/new.py", "file_text": "x"},
    {"command": "create", "path": "/testbed/deep/shared.txt", "file_text": "in a sticky world-writable dir\n"},
    {"command": "create", "path": "/testbed/dangling", "file_text": "through a dangling link\n"},
    {"command": "create", "path": "/testbed/no-text.py"},
    {"command": "view", "path": "/testbed/new"},
    {"command": "str_replace", "path": "/testbed/pkg/main.py", "old_str": "VALUE = 1", "new_str": "VALUE = 2"},
    {"command": "str_replace", "path": "/testbed/pkg/main.py", "old_str": "absent", "new_str": ""},
    {"command": "str_replace", "path": "/testbed/pkg/main.py", "old_str": "", "new_str": "x"},
    {"command": "str_replace", "path": "/testbed/pkg/main.py", "old_str": "    return x + 3\n",
     "new_str": "    return x + 30\n"},
    {"command": "str_replace", "path": "/testbed/pkg/main.py", "old_str": "def f0(x):\n"},
    {"command": "str_replace", "path": "/testbed/pkg/crlf.txt", "old_str": "second", "new_str": "2nd"},
    {"command": "str_replace", "path": "/testbed/pkg/latin.txt", "old_str": "b = 2", "new_str": "b = 3"},
    {"command": "str_replace", "path": "/testbed/pkg/frozen.py", "old_str": "True", "new_str": "False"},
    {"command": "str_replace", "path": "/testbed/locked/inside.txt", "old_str": "writable", "new_str": "edited"},
    {"command": "str_replace", "path": "/testbed/rootdir/owned.txt", "old_str": "root", "new_str": "user"},
    {"command": "str_replace", "path": "/testbed/pkg", "old_str": "x", "new_str": "y"},
    {"command": "str_replace", "path": "/testbed/pkg/util.go"},
    {"command": "str_replace", "path": "/testbed/main-link.py", "old_str": "def f5", "new_str": "def g5"},
    {"command": "insert", "path": "/testbed/pkg/util.go", "insert_line": 0, "new_str": "// Package pkg adds."},
    {"command": "insert", "path": "/testbed/pkg/util.go", "insert_line": 7, "new_str": "// end"},
    {"command": "insert", "path": "/testbed/pkg/util.go", "insert_line": 99, "new_str": "x"},
    {"command": "insert", "path": "/testbed/pkg/util.go", "new_str": "x"},
    {"command": "undo_edit", "path": "/testbed/pkg/util.go"},
    {"command": "undo_edit", "path": "/testbed/pkg/main.py"},
    {"command": "undo_edit", "path": "/testbed/new/sub/file.py"},
    {"command": "undo_edit", "path": "/testbed/pkg/frozen.py"},
    {"command": "view", "path": "/testbed/pkg/util.go"},
    {"command": "view", "path": "/testbed/pkg/main.py", "view_range": [1, 12]},
    {"command": "delete", "path": "/testbed/pkg/util.go"},
    {"command": "view", "path": "/testbed"},
]


def _context(base: str) -> bytes:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        add_text(tar, "Dockerfile", DOCKERFILE.format(base=base, setup=SETUP), mode=0o644)
        for rel, content in sorted(FILES.items()):
            data = content if isinstance(content, bytes) else content.encode()
            info = tarfile.TarInfo(f"testbed/{rel}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return context.getvalue()


def _image(client, recipe: str) -> str:
    """The repository on base image `recipe`, kept under a content-hash tag (built once)."""
    context = _context(build_base(client, recipe=recipe))
    tag = f"swe-aem/test-editor-{recipe}:{hashlib.sha256(context).hexdigest()[:12]}"
    if not image_exists(client, tag):
        client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, rm=True,
                            forcerm=True, network_mode="none", pull=False)
    return tag


@pytest.fixture(scope="module")
def images(docker_client) -> dict[str, str]:
    return {"python": _image(docker_client, "base"), "go": _image(docker_client, "base-go")}


def _sandbox(client, image: str) -> Sandbox:
    return Sandbox.start(client, image, run_id="pytest-editor")


def _observations(sandbox: Sandbox, via_api: bool) -> list[tuple[str, bool]]:
    """(output, error) of each of CALLS, by the tool runner (which picks its route), or
    through the Docker API whatever the image has."""
    tools, history = ToolRunner(sandbox), {}
    seen = []
    for args in CALLS:
        if via_api:
            ok, output = docker_editor.edit(sandbox, args, history)
            seen.append((output, not ok))
        else:
            result = tools.run(ToolCall("str_replace_editor", args))
            seen.append((result.output, result.error))
    return seen


def _tree(sandbox: Sandbox) -> dict[str, tuple]:
    """Every entry of /testbed: type, mode, owner, link target and bytes (mtimes aside)."""
    chunks, _ = sandbox.container.get_archive("/testbed")
    tree = {}
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            tree[member.name] = (member.type, member.mode & 0o7777, member.uid, member.gid, member.linkname,
                                 handle.read() if handle else None)
    return tree


@pytest.fixture(scope="module")
def runs(docker_client, images) -> dict[str, tuple[list, dict]]:
    """The observations and the resulting tree of each route."""
    out = {}
    for name, image, via_api in (("python", images["python"], False), ("go", images["go"], False),
                                 ("python-via-api", images["python"], True)):
        with _sandbox(docker_client, image) as sb:
            has_python = sb.exec("command -v python3", timeout=30).exit_code == 0
            assert has_python == (name != "go"), name
            assert sb.uid == 1000
            observations = _observations(sb, via_api)
            # the in-container editor was never copied into the Go image
            installed = sb.exec("test -e /tmp/.swe_aem_editor/editor.py", timeout=30).exit_code == 0
            assert installed == (name == "python"), name
            out[name] = (observations, _tree(sb))
    return out


@pytest.mark.parametrize("route", ["go", "python-via-api"])
def test_same_observations_as_the_in_container_editor(runs, route):
    expected, got = runs["python"][0], runs[route][0]
    for args, want, have in zip(CALLS, expected, got):
        assert have == want, args
    assert len(got) == len(expected) == len(CALLS)


@pytest.mark.parametrize("route", ["go", "python-via-api"])
def test_same_resulting_files_as_the_in_container_editor(runs, route):
    expected, got = runs["python"][1], runs[route][1]
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name


def test_the_observations_say_what_they_should(runs):
    """What the three routes agree on is right: spot checks of the Python image's run."""
    seen = {json.dumps(args, sort_keys=True): out for args, out in zip(CALLS, runs["python"][0])}

    def obs(**args):
        return seen[json.dumps(args, sort_keys=True)]

    listing_text, error = obs(command="view", path="/testbed")
    assert not error and listing_text.startswith("Files under /testbed (2 levels):\n")
    lines = listing_text.splitlines()[1:]
    # files of directories up to two below /testbed (os.walk's base depth 2), none deeper
    assert "/testbed/deep/a/x.txt" in lines and "/testbed/deep/a/b/c.txt" not in lines
    assert not [ln for ln in lines if "/." in ln]  # hidden files and directories left out
    assert "/testbed/main-link.py" in lines and not [ln for ln in lines if "pkg-link/" in ln]
    assert obs(command="view", path="/testbed/pkg-link")[0].startswith("Files under /testbed/pkg (2 levels)")
    assert obs(command="view", path="/testbed/etc-link/passwd") == (
        "ERROR: path /testbed/etc-link/passwd is outside the repository /testbed", True)
    assert obs(command="view", path="/testbed/pkg/latin.txt") == ("     1\tcaf\ufffd = 1\n     2\tb = 2", False)
    assert obs(command="view", path="/testbed/pkg/crlf.txt")[0] == "     1\tfirst\n     2\tsecond\n     3\tthird"
    big, error = obs(command="view", path="/testbed/big.txt")
    assert not error and "[... output truncated:" in big and big.endswith("  2000\tline 1999 of a file longer "
                                                                          "than the output limit")
    assert obs(command="view", path="/testbed/rootdir/secret") == (
        "ERROR: [Errno 13] Permission denied: '/testbed/rootdir/secret'", True)
    assert obs(command="create", path="/testbed/locked/sub/new.py", file_text="x") == (
        "ERROR: [Errno 13] Permission denied: '/testbed/locked/sub'", True)
    assert obs(command="create", path="/testbed/pkg/main.py/a/x.py", file_text="x") == (
        "ERROR: [Errno 20] Not a directory: '/testbed/pkg/main.py/a'", True)
    assert obs(command="str_replace", path="/testbed/pkg/frozen.py", old_str="True", new_str="False") == (
        "ERROR: [Errno 13] Permission denied: '/testbed/pkg/frozen.py'", True)
    assert obs(command="str_replace", path="/testbed/locked/inside.txt", old_str="writable",
               new_str="edited")[0].startswith("Edited /testbed/locked/inside.txt.")
    dup, error = obs(command="str_replace", path="/testbed/pkg/main.py", old_str="VALUE = 1", new_str="VALUE = 2")
    assert error and "occurs 2 times" in dup and "[19, 20]" in dup
    assert obs(command="undo_edit", path="/testbed/new/sub/file.py") == (
        "ERROR: no edit of /testbed/new/sub/file.py to undo", True)

    tree = runs["python"][1]
    assert tree["testbed/pkg/latin.txt"][5] == b"caf\xe9 = 3\n".replace(b"3", b"1") + b"b = 3\n"
    assert tree["testbed/pkg/crlf.txt"][5] == b"first\n2nd\nthird\n"  # read as text: CRLF becomes LF
    assert tree["testbed/new/sub/file.py"][1:4] == (0o644, 1000, 1000)
    assert tree["testbed/new/sub"][1:4] == (0o755, 1000, 1000)
    assert tree["testbed/nowhere"][5] == b"through a dangling link\n"  # created at the link's target
    assert tree["testbed/rootdir/owned.txt"][1:4] == (0o644, 0, 0)
    assert tree["testbed/pkg/frozen.py"][1:4] == (0o444, 1000, 1000)
    # main.py: f0's def deleted, f3's return edited, f5 renamed through the link and that undone
    # (the undo history is the resolved file's, whichever path edited it)
    main = tree["testbed/pkg/main.py"][5]
    assert main.startswith(b"    return x + 0\n") and b"x + 30" in main and b"def g5" not in main


def test_the_view_of_a_directory_walks_as_os_walk(tmp_path):
    """The Docker route's directory view (two `find`s in the container) orders and prunes as
    os.walk does: run here on a host tree, against the in-container editor's own walk."""
    top = tmp_path / "repo"
    for rel in ("b.py", "a.py", "z/y.py", "z/.hid/q.py", ".hidden/x", "m/n/o/p/deep.py", "m/n/o/three.py",
                "m/n/two.py", "m/one.py", "Z.py", "_u.py"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(rel)
    (top / "dir-link").symlink_to(top / "m")
    (top / "file-link.py").symlink_to(top / "a.py")
    (top / "gone").symlink_to(top / "nowhere")
    script = docker_editor._WALK.format(p=str(top))
    output = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout.decode()

    class Shell:
        def exec(self, cmd, **_):
            assert cmd == script
            return type("R", (), {"output": output})()

    files = docker_editor.DockerFiles.__new__(docker_editor.DockerFiles)
    files.sandbox = Shell()
    assert listing(str(top), files.walk(str(top))) == listing(str(top), os.walk(str(top)))

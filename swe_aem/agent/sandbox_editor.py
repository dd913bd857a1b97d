"""str_replace_editor: its one implementation, and the front end that runs it in a container.

`run(args, root, files)` is the whole editor: it checks the request, decides what each
command shows and writes, and words every error. It reaches the file system only through
`files`, a handful of primitives (resolve a path, what is there, read, write, make the
parent directories, walk a directory, the undo history), so the same observations come
whichever way the files are reached:

- `LocalFiles`: this file run INSIDE the sandbox container as
  `python3 editor.py BASE64_JSON ROOT`, with the container's own Python (the usual way:
  one exec per edit keeps round trips low; the undo history lives in the container under
  /tmp, so it never shows up in the repository's git diff). Exit status 0 with the result
  on stdout, or 1 with "ERROR: ..." on stdout.
- swe_aem.agent.docker_editor.DockerFiles: the same files read and written from the host
  through the Docker API, for images without python3.

Standalone (standard library only, Python 3.6+: older containers' Pythons run it), so it
can be copied into a container as one file; the host imports it as a module.
"""

import base64
import hashlib
import io
import json
import os
import posixpath
import sys

ROOT = "/testbed"  # the repository when the caller names none
HISTORY = "/tmp/.swe_aem_editor"
SNIPPET_LINES = 4
MAX_LIST = 200


class EditorError(Exception):
    """A request the editor refuses; its message is the observation (after "ERROR: ")."""


# ---------------------------------------------------------------------- text in, text out

def decode(data: bytes) -> str:
    """A file's bytes as the editor's text: what `open(path)` in text mode reads (UTF-8;
    undecodable bytes kept as surrogates, so writing the text back restores them; CRLF
    and CR read as LF)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape").read()


def encode(text: str) -> bytes:
    """The bytes of a text the editor writes or prints (surrogates back to their bytes)."""
    return text.encode("utf-8", errors="surrogateescape")


def _numbered(text: str, first: int = 1) -> str:
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":  # the file's final newline is not a line of its own
        lines.pop()
    return "\n".join(f"{i:6d}\t{line}" for i, line in enumerate(lines, first))


def _snippet(path: str, text: str, line: int) -> str:
    lines = text.split("\n")
    lo = max(0, line - SNIPPET_LINES)
    hi = min(len(lines), line + SNIPPET_LINES + 1)
    return f"Snippet of {path}:\n" + _numbered("\n".join(lines[lo:hi]), lo + 1)


def listing(path: str, walk) -> str:
    """The `view` of directory `path`: its files two levels down, hidden ones left out.

    `walk` is `os.walk(path)` or a stand-in yielding the same (base, dirs, files) triples
    and honouring the pruning of `dirs` in place.
    """
    entries = []
    for base, dirs, files in walk:
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        depth = base[len(path):].count("/")
        if depth >= 2:
            dirs[:] = []
        entries += [posixpath.join(base, f) for f in sorted(files) if not f.startswith(".")]
    more = f"\n... and {len(entries) - MAX_LIST} more" if len(entries) > MAX_LIST else ""
    return f"Files under {path} (2 levels):\n" + "\n".join(entries[:MAX_LIST]) + more


def view_text(text: str, view_range) -> str:
    """The `view` of a file's text: numbered lines, all of them or `view_range` [first, last]."""
    if not view_range:
        return _numbered(text)
    lines = text.split("\n")
    if len(view_range) != 2:
        raise EditorError("view_range must be [first, last]")
    first, last = view_range
    # an end past the file (or -1) shows up to its last line: a function near the end of a
    # file is viewed by the same "N lines from its def" as any other
    last = len(lines) if last == -1 or last > len(lines) else last
    if not 1 <= first <= last:
        raise EditorError(f"view_range {view_range} is outside the file's lines 1..{len(lines)}")
    return _numbered("\n".join(lines[first - 1:last]), first)


def replaced(path: str, text: str, old_str: str, new_str: str) -> "tuple[str, str]":
    """(the new text, the observation) of replacing the one occurrence of old_str in text."""
    count = text.count(old_str)
    if not old_str or count == 0:
        raise EditorError(f"old_str was not found in {path}; it must match the file exactly")
    if count > 1:
        starts, at = [], text.find(old_str)
        while at != -1:
            starts.append(text.count("\n", 0, at) + 1)
            at = text.find(old_str, at + 1)
        raise EditorError(
            f"old_str occurs {count} times in {path} (lines {starts}); include more context "
            "so that it is unique"
        )
    at = text.index(old_str)
    new_text = text.replace(old_str, new_str, 1)
    return new_text, f"Edited {path}.\n" + _snippet(path, new_text, text.count("\n", 0, at) + 1)


def inserted(path: str, text: str, insert_line: int, new_str: str) -> "tuple[str, str]":
    """(the new text, the observation) of inserting new_str after line insert_line of text."""
    lines = text.split("\n")
    if not 0 <= insert_line <= len(lines):
        raise EditorError(f"insert_line {insert_line} is outside 0..{len(lines)}")
    new_text = "\n".join(lines[:insert_line] + new_str.split("\n") + lines[insert_line:])
    return new_text, f"Inserted into {path}.\n" + _snippet(path, new_text, insert_line + 1)


# ---------------------------------------------------------------------- the editor

def run(args: dict, root: str, files) -> "tuple[bool, str]":
    """(ok, observation) of one editor request `args` (the tool call's arguments: command,
    path and the command's own), for files under `root`, reached through `files`.

    A refused request and an OSError of the file system (a file the user may not write,
    say) are observations too: (False, "ERROR: ..."). Anything else (the container gone)
    propagates.
    """
    try:
        return True, _dispatch(dict(args), posixpath.normpath(root), files)
    except (EditorError, OSError) as exc:
        return False, f"ERROR: {exc}"


def _dispatch(args: dict, root: str, files) -> str:
    command = args.pop("command")
    path = _check_path(args.pop("path"), root, files)
    if command == "view":
        if files.kind(path) == "dir":
            return listing(path, files.walk(path))
        return view_text(_read(files, path), args.get("view_range"))
    if command == "create":
        if "file_text" not in args:
            raise EditorError("create needs file_text")
        if files.kind(path) is not None:
            raise EditorError(f"file {path} already exists; `create` cannot overwrite, use str_replace")
        files.makedirs(posixpath.dirname(path))
        files.write(path, args["file_text"])
        return f"File created: {path}"
    if command == "str_replace":
        if "old_str" not in args:
            raise EditorError("str_replace needs old_str")
        text = _read(files, path)
        new_text, observation = replaced(path, text, args["old_str"], args.get("new_str", ""))
        _edit(files, path, text, new_text)
        return observation
    if command == "insert":
        if "insert_line" not in args or "new_str" not in args:
            raise EditorError("insert needs insert_line and new_str")
        text = _read(files, path)
        new_text, observation = inserted(path, text, args["insert_line"], args["new_str"])
        _edit(files, path, text, new_text)
        return observation
    if command == "undo_edit":
        stack = files.load_history(path)
        if not stack:
            raise EditorError(f"no edit of {path} to undo")
        previous = stack.pop()
        files.save_history(path, stack)
        files.write(path, previous)
        return f"Reverted the last edit of {path}."
    raise EditorError(f"unknown command {command!r}")


def _check_path(path: str, root: str, files) -> str:
    if not path or not posixpath.isabs(path):
        raise EditorError(f"path must be absolute, e.g. {root}/file.py; got {path!r}")
    real = files.realpath(path)
    if posixpath.commonpath([real, root]) != root:
        raise EditorError(f"path {path} is outside the repository {root}")
    return real


def _read(files, path: str) -> str:
    kind = files.kind(path)
    if kind is None:
        raise EditorError(f"file {path} does not exist")
    if kind == "dir":
        raise EditorError(f"{path} is a directory, not a file")
    return files.read(path)


def _edit(files, path: str, text: str, new_text: str) -> None:
    """Write an edit of `path`, its text before the edit pushed on the undo history first."""
    stack = files.load_history(path)
    stack.append(text)
    files.save_history(path, stack)
    files.write(path, new_text)


# ---------------------------------------------------------------------- in the container

class LocalFiles:
    """The editor's file primitives on this process's own file system (the container's,
    where this file runs inside it); the undo history as JSON files under HISTORY."""

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def kind(self, path: str) -> "str | None":
        """"dir", "file" (anything else that exists) or None (nothing there)."""
        if os.path.isdir(path):
            return "dir"
        return "file" if os.path.exists(path) else None

    def read(self, path: str) -> str:
        with open(path, "rb") as fh:
            return decode(fh.read())

    def write(self, path: str, text: str) -> None:
        """As `open(path, "w")`: an existing file keeps its inode, mode and owner."""
        with open(path, "wb") as fh:
            fh.write(encode(text))

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def walk(self, path: str):
        return os.walk(path)

    def load_history(self, path: str) -> list:
        try:
            with open(_history_file(path)) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return []

    def save_history(self, path: str, stack: list) -> None:
        os.makedirs(HISTORY, exist_ok=True)
        with open(_history_file(path), "w") as fh:
            json.dump(stack, fh)


def _history_file(path: str) -> str:
    return os.path.join(HISTORY, hashlib.sha1(path.encode()).hexdigest() + ".json")


def main(argv: list) -> int:
    """`editor.py BASE64_JSON [ROOT]`: the observation on stdout; exit status 1 on an error."""
    args = json.loads(base64.b64decode(argv[1]))
    ok, observation = run(args, argv[2] if len(argv) > 2 else ROOT, LocalFiles())
    sys.stdout.buffer.write(encode(observation))
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""str_replace_editor, run INSIDE the sandbox container: `python3 editor.py BASE64_JSON`.

Standalone (standard library only) because the container has its own Python. One
exec per edit keeps round trips low; undo history lives in the container under
/tmp so it never shows up in the repository's git diff. Exit status 0 with the
result on stdout, or 1 with the error message on stdout.
"""

import base64
import hashlib
import json
import os
import sys

ROOT = "/testbed"
HISTORY = "/tmp/.swe_aem_editor"
SNIPPET_LINES = 4
MAX_LIST = 200


class EditorError(Exception):
    pass


def _check_path(path):
    if not path or not os.path.isabs(path):
        raise EditorError(f"path must be absolute, e.g. {ROOT}/file.py; got {path!r}")
    real = os.path.realpath(path)
    if os.path.commonpath([real, ROOT]) != ROOT:
        raise EditorError(f"path {path} is outside the repository {ROOT}")
    return real


def _read(path):
    if not os.path.exists(path):
        raise EditorError(f"file {path} does not exist")
    if os.path.isdir(path):
        raise EditorError(f"{path} is a directory, not a file")
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return fh.read()


def _write(path, text, remember=True):
    if remember and os.path.exists(path):
        _push_history(path, _read(path))
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(text)


def _history_file(path):
    return os.path.join(HISTORY, hashlib.sha1(path.encode()).hexdigest() + ".json")


def _push_history(path, text):
    os.makedirs(HISTORY, exist_ok=True)
    stack = _load_history(path)
    stack.append(text)
    with open(_history_file(path), "w") as fh:
        json.dump(stack, fh)


def _load_history(path):
    try:
        with open(_history_file(path)) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return []


def _numbered(text, first=1):
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":  # the file's final newline is not a line of its own
        lines.pop()
    return "\n".join(f"{i:6d}\t{line}" for i, line in enumerate(lines, first))


def _snippet(path, text, line):
    lines = text.split("\n")
    lo = max(0, line - SNIPPET_LINES)
    hi = min(len(lines), line + SNIPPET_LINES + 1)
    return f"Snippet of {path}:\n" + _numbered("\n".join(lines[lo:hi]), lo + 1)


def view(path, view_range=None):
    if os.path.isdir(path):
        entries = []
        for base, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            depth = base[len(path):].count(os.sep)
            if depth >= 2:
                dirs[:] = []
            entries += [os.path.join(base, f) for f in sorted(files) if not f.startswith(".")]
        more = f"\n... and {len(entries) - MAX_LIST} more" if len(entries) > MAX_LIST else ""
        return f"Files under {path} (2 levels):\n" + "\n".join(entries[:MAX_LIST]) + more
    text = _read(path)
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


def create(path, file_text):
    if os.path.exists(path):
        raise EditorError(f"file {path} already exists; `create` cannot overwrite, use str_replace")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write(path, file_text, remember=False)
    return f"File created: {path}"


def str_replace(path, old_str, new_str=""):
    text = _read(path)
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
    _write(path, new_text)
    return f"Edited {path}.\n" + _snippet(path, new_text, text.count("\n", 0, at) + 1)


def insert(path, insert_line, new_str):
    text = _read(path)
    lines = text.split("\n")
    if not 0 <= insert_line <= len(lines):
        raise EditorError(f"insert_line {insert_line} is outside 0..{len(lines)}")
    new_lines = lines[:insert_line] + new_str.split("\n") + lines[insert_line:]
    new_text = "\n".join(new_lines)
    _write(path, new_text)
    return f"Inserted into {path}.\n" + _snippet(path, new_text, insert_line + 1)


def undo_edit(path):
    stack = _load_history(path)
    if not stack:
        raise EditorError(f"no edit of {path} to undo")
    previous = stack.pop()
    with open(_history_file(path), "w") as fh:
        json.dump(stack, fh)
    _write(path, previous, remember=False)
    return f"Reverted the last edit of {path}."


def main(argv):
    args = json.loads(base64.b64decode(argv[1]))
    command = args.pop("command")
    path = _check_path(args.pop("path"))
    if command == "view":
        return view(path, args.get("view_range"))
    if command == "create":
        if "file_text" not in args:
            raise EditorError("create needs file_text")
        return create(path, args["file_text"])
    if command == "str_replace":
        if "old_str" not in args:
            raise EditorError("str_replace needs old_str")
        return str_replace(path, args["old_str"], args.get("new_str", ""))
    if command == "insert":
        if "insert_line" not in args or "new_str" not in args:
            raise EditorError("insert needs insert_line and new_str")
        return insert(path, args["insert_line"], args["new_str"])
    if command == "undo_edit":
        return undo_edit(path)
    raise EditorError(f"unknown command {command!r}")


if __name__ == "__main__":
    try:
        print(main(sys.argv), end="")
    except EditorError as exc:
        print(f"ERROR: {exc}", end="")
        sys.exit(1)

"""Write configs/train.yaml from swe_aem/config.py: `Config()`'s defaults, in field order, each
key's trailing comment the first sentence of its field docstring (wrapped at 100 columns).

    python scripts/write_train_yaml.py          # rewrite configs/train.yaml
    python scripts/write_train_yaml.py --check  # exit 1 with a diff when the file differs

Edit a default or a docstring in swe_aem/config.py, then rerun this (a test checks the file
is what this writes). In comments None / True / False are spelled as YAML spells them. A
section left null (trainer.lora) gets a comment block listing its defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's swe_aem

from swe_aem.config import CONFIG_ROOT, Config, field_docs, nested_section

TRAIN_YAML = CONFIG_ROOT / "train.yaml"
COMMAND = "python scripts/write_train_yaml.py"
HEADER = f"""\
# Defaults of a training run (mirror of swe_aem/config.py; a test keeps them equal).
# Written by `{COMMAND}` from the dataclasses' defaults; each key's
# comment is the first sentence of its field's docstring there (edit those, then rerun it).
# The embedded default (`make train`): tiny model, SFT warm start on gold demonstrations of
# 24 generated train tasks whose bug is one operator on one line (cached after the first
# run), RLOO + AEM on those tasks, and the held-out resolve rate on the 16 generated test
# tasks of the same kind before the first RL step and after the last.
"""
COMMENT_COLUMN = 30  # where trailing comments start (further right after a long line)
WIDTH = 100  # comments wrap onto comment lines of their own past this column
YAML_WORDS = {"None": "null", "True": "true", "False": "false"}
# a sentence ends at . ! ? before a space or the end, but not in "e.g." / "i.e."
SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)[.!?](?=\s|$)")


def summary(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line, its final period
    dropped, None / True / False as YAML's null / true / false."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = SENTENCE_END.search(paragraph)
    sentence = paragraph[: end.start()] if end else paragraph
    return re.sub(r"\b(None|True|False)\b", lambda m: YAML_WORDS[m.group(1)], sentence)


def with_comment(line: str, comment: str, in_comment: bool = False) -> list[str]:
    """`line` with `comment` trailing from COMMENT_COLUMN, wrapped onto comment lines below
    it (aligned, indented). `in_comment`: `line` is itself a comment line, so the text
    follows without a second `#`."""
    if not comment:
        return [line]
    column = max(COMMENT_COLUMN, len(line) + 2)
    marker = "" if in_comment else "# "
    chunks = textwrap.wrap(comment, WIDTH - column - len(marker),
                           break_long_words=False, break_on_hyphens=False)
    below = line[: line.index("#") + 1].ljust(column) + "  " if in_comment else " " * column + "#   "
    return [f"{line.ljust(column)}{marker}{chunks[0]}"] + [below + chunk for chunk in chunks[1:]]


def scalar(value: Any) -> str:
    """A scalar as PyYAML writes it in block style (null, true, 1.0e-06, '', plain strings)."""
    if isinstance(value, (dict, list, tuple)) or dataclasses.is_dataclass(value):
        raise TypeError(f"not a scalar: {value!r}")
    text = yaml_dump({"k": value})
    if not text.startswith("k: ") or text.count("\n") != 1:
        raise ValueError(f"{value!r} does not fit on one YAML line: {text!r}")
    return text[3:-1]


def flow(value: list) -> str:
    """A list in flow style: [] or [a, b]."""
    return yaml_dump(value, default_flow_style=True).strip()


def yaml_dump(value: Any, **kwargs: Any) -> str:
    import yaml

    return yaml.safe_dump(value, width=math.inf, allow_unicode=True, sort_keys=False, **kwargs)


def off_section_block(cls: type, path: str, pad: str) -> list[str]:
    """Comment lines listing the defaults of section `cls`, left null at `path`."""
    first = dataclasses.fields(cls)[0]
    default = cls()
    turn_on = f"`{path}.{first.name}={scalar(getattr(default, first.name))}`"
    lines = [f"{pad}# {turn_on} turns it on with these defaults (swe_aem/config.py {cls.__name__}):"]
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        text = flow(value) if isinstance(value, list) else scalar(value)
        lines += with_comment(f"{pad}#   {f.name}: {text}", summary(docs.get(f.name, "")), in_comment=True)
    return lines


def section_lines(obj: Any, path: str = "", indent: int = 0) -> list[str]:
    """The YAML lines of dataclass `obj` (at dotted `path`), its fields in order."""
    cls, pad = type(obj), " " * indent
    docs = field_docs(cls)
    lines: list[str] = []
    for f in dataclasses.fields(cls):
        value, key = getattr(obj, f.name), f"{pad}{f.name}:"
        where = f"{path}.{f.name}" if path else f.name
        comment = summary(docs.get(f.name, ""))
        if dataclasses.is_dataclass(value):
            lines += with_comment(key, comment) + section_lines(value, where, indent + 2)
        elif value is None and (sub := nested_section(cls, f.name)) is not None:
            lines += off_section_block(sub, where, pad) + with_comment(f"{key} null", comment)
        elif isinstance(value, list) and len(value) > 1:
            lines += with_comment(key, comment) + [f"{pad}- {scalar(item)}" for item in value]
        elif isinstance(value, list):
            lines += with_comment(f"{key} {flow(value)}", comment)
        else:
            lines += with_comment(f"{key} {scalar(value)}", comment)
    return lines


def render() -> str:
    """configs/train.yaml as this script writes it."""
    return HEADER + "\n".join(section_lines(Config())) + "\n"


def shown(path: Path) -> str:
    """`path` relative to the repository when it is in it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and print a diff when the file differs")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        TRAIN_YAML.write_text(text)
        print(f"wrote {shown(TRAIN_YAML)}")
        return 0
    current = TRAIN_YAML.read_text() if TRAIN_YAML.is_file() else ""
    if current == text:
        return 0
    name = shown(TRAIN_YAML)
    sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True),
                                               text.splitlines(keepends=True),
                                               f"{name} (now)", f"{name} (as written by {COMMAND})"))
    print(f"{name} is not what swe_aem/config.py gives: run `{COMMAND}`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""swe_aem.sandbox is a leaf like swe_aem.algo: nothing else of the project is imported there
but swe_aem.errors (the one base of user-facing errors, itself importing nothing), and swe_aem.data's Instance satisfies the pool's SandboxSpec protocol."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from swe_aem.data.instances import Instance
from swe_aem.sandbox import SandboxSpec

SANDBOX = Path(__file__).resolve().parents[2] / "swe_aem" / "sandbox"


def _project_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return [name for name in found if name == "swe_aem" or name.startswith("swe_aem.")]


def test_sandbox_imports_only_itself():
    files = sorted(SANDBOX.glob("*.py"))
    assert len(files) >= 5
    outside = {f.name: [m for m in _project_imports(f) if not m.startswith("swe_aem.sandbox") and m != "swe_aem.errors"] for f in files}
    assert {name: mods for name, mods in outside.items() if mods} == {}


def test_instance_is_a_sandbox_spec():
    needed = {name for name in SandboxSpec.__dict__ if not name.startswith("_")}
    assert needed == {"instance_id", "image", "base_commit", "env_activate"}
    fields = {f.name: f for f in dataclasses.fields(Instance)}
    assert needed <= set(fields) and all(fields[n].type in ("str", str) for n in needed)
    assert fields["env_activate"].default == ""

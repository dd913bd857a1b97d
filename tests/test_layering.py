"""The package layering of swe_aem, read from the code's imports.

Every `import` of the project, at module level or inside a function (a lazy import is
still an edge), including those under `if TYPE_CHECKING:`, must point from a package to
one of a lower rank; and within a package the modules import each other without a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "swe_aem"

# A unit is a package under swe_aem/ or a top-level module; lower ranks are imported by higher.
RANKS = {
    # the root, imported anywhere
    "errors": 0,  # the one base of user-facing errors and their exit codes (stdlib only)
    # leaves: no other unit of the project but errors
    "swe_aem": 1,  # swe_aem/__init__.py: the version only
    "jsonl": 1,  # the one JSONL reader/writer (stdlib only)
    "isolate": 1,  # call_in_child (stdlib only)
    "hostmem": 1,  # host memory: RSS, node memory, malloc arenas and trim (stdlib only)
    "algo": 1,  # pure torch
    "sandbox": 1,  # Docker
    "policy": 1,  # model presets, vLLM, the client
    # on the leaves
    "data": 2,  # instances; builds images with sandbox
    "agent": 2,  # the episode loop on policy and sandbox; grading reaches it as a callable
    "reward": 3,  # grading: data's instances in sandbox containers
    "fleet": 3,  # rollout replicas as Ray actors (agent, policy, sandbox); graders given as factories
    "view": 3,  # the run viewer: reads run folders (jsonl only), writes or serves the page
    "config": 3,  # typed config: names algo's estimators and losses, embeds the agent's settings
    "plan": 4,  # the memory plan of a GPU run: policy's presets and vLLM command, config's settings
    # eval and train: neither imports the other (the held-out evaluation's report writer
    # reaches the trainer from the edge)
    "eval": 4,  # `swe-aem eval` (agent + reward) and its reports
    "train": 5,  # the RL loop on DeepSpeed (config, plan, fleet, agent, reward)
    "sft": 6,  # SFT on the RL trainer's engine, demonstrations, the cached warm start
    # the edge: packages that join packages
    "evidence": 7,  # `swe-aem evidence`'s library: toy game and the LLM arms (real trainer, warm start)
    # the CLI halves of every command: the top layer, may import everything
    "commands": 8,
    "cli": 9,  # `swe-aem COMMAND` (commands are looked up by name, not imported)
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def project_imports(path: Path) -> set[str]:
    """The project modules `path` imports anywhere in its body (`from pkg import mod` is mod)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if is_module(sub) else base)
    return {name for name in found if name == "swe_aem" or name.startswith("swe_aem.")}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_graph() -> dict[str, set[str]]:
    return {module_name(p): project_imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_unit_has_a_rank():
    units = {unit(m) for m in module_graph()}
    assert units - set(RANKS) == set(), "give the new package a rank here"
    assert set(RANKS) - units == set(), "a ranked package is gone: drop it here"


def test_imports_point_to_lower_ranks():
    upward = sorted(
        f"{src} -> {dst} ({unit(src)} {RANKS[unit(src)]} -> {unit(dst)} {RANKS[unit(dst)]})"
        for src, targets in module_graph().items() for dst in targets
        if unit(src) != unit(dst) and RANKS[unit(dst)] >= RANKS[unit(src)]
    )
    assert upward == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_no_cycle_among_a_packages_modules():
    by_unit: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for src, targets in module_graph().items():
        by_unit[unit(src)][src] = {t for t in targets if unit(t) == unit(src) and t != src}
    assert "data" in by_unit and len(by_unit["data"]) >= 4
    cycles = {u: c for u, g in by_unit.items() if (c := _cycle(g)) is not None}
    assert cycles == {}


def test_the_checker_sees_lazy_imports():
    """Sanity of the parser itself: a function-level import is an edge too."""
    graph = module_graph()
    # swe_aem.data.generator imports swe_aem.sandbox inside validate_repo
    assert "swe_aem.sandbox" in graph["swe_aem.data.generator"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None

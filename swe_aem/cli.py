"""The `swe-aem` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen module is imported, so `swe-aem --help` stays fast and a
missing optional dependency only affects the commands that need it.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from swe_aem.errors import SweAemError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("swe_aem.commands.compare", "paired comparison of two graded runs (bootstrap CI, McNemar)"),
    "evidence": ("swe_aem.commands.evidence", "small-scale GRPO vs GRPO+AEM evidence on a toy multi-turn task"),
    "report": ("swe_aem.commands.report", "render graded runs as eval JSON, Markdown and a plot"),
    "images": ("swe_aem.commands.images", "build the offline base + local suite images, or pull official ones"),
    "grade": ("swe_aem.commands.grade", "grade predictions (official JSONL) in fresh containers; writes report.json"),
    "model": ("swe_aem.commands.model", "prepare a model preset's folder (e.g. `model prepare tiny`) or list presets"),
    "serve": ("swe_aem.commands.serve", "start a vLLM OpenAI-compatible server for a model and keep it up"),
    "train": ("swe_aem.commands.train", "RL training: rollouts, rewards, RLOO/GRPO + AEM, PPO on DeepSpeed, weight sync"),
    "eval": ("swe_aem.commands.eval", "evaluate a model: k runs, resolve rate, Pass@1 with CI, Pass@k"),
    "reproduce": ("swe_aem.commands.reproduce", "DeepSWE recipe with and without AEM, evaluated and compared"),
    "plan": ("swe_aem.commands.plan", "what a GPU run would start where, and whether its memory fits (starts nothing)"),
    "plot": ("swe_aem.commands.plot", "draw a training run's curves (metrics.jsonl) to PNG"),
    "generate": ("swe_aem.commands.generate", "regenerate the generated suite: procedural bugs in the local repos, validated in containers"),
    "rollout": ("swe_aem.commands.rollout", "run the agent G times per instance, grade, write trajectories + predictions"),
    "view": ("swe_aem.commands.view", "the run viewer: a web page over a run folder, eval report or rollout output"),
    "sft": ("swe_aem.commands.sft", "supervised warm start: gold-patch demonstrations, SFT on episodes (reward-filtered)"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swe-aem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in sorted(COMMANDS.items()):
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C: every command's `with` blocks
        # stop their servers and remove their containers instead of orphaning them
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(sorted(COMMANDS))}")
        parser.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"swe-aem {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except SweAemError as exc:  # a message for the user: no traceback, the kind's exit code
        print(f"swe-aem {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

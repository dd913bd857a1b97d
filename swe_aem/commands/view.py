"""`swe-aem view RUN [RUN_B] [--out DIR | --port P --host H]`: the run viewer.

The CLI half that joins the viewer (swe_aem/view: reads run folders, writes or serves the
page) with the evaluation's paired statistics (swe_aem/eval: what `swe-aem compare`
computes), for two evaluations or two training runs' held-out reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swe_aem.view.run_folder import RunSource, folder_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a training run folder, a swe-aem eval report or a rollout output")
    parser.add_argument("run_b", type=Path, nargs="?", help="a second one to compare with (B against A)")
    parser.add_argument("--out", type=Path, help="write the page as static files here (default: RUN/view/)")
    parser.add_argument("--port", type=int, help="serve the page on this port instead (0: a free one); "
                        "it refreshes as a live run writes")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")


def eval_file(src: RunSource) -> Path | None:
    """The graded record a comparison reads: an eval report's eval.json, or a training run's
    last held-out report after RL."""
    if src.kind == "eval":
        return src.folder / "eval.json"
    if src.kind == "train":
        after = sorted((src.folder / "heldout").glob("after-step-*/eval.json"))
        return after[-1] if after else None
    return None


def set_of(src: RunSource, file: Path) -> str | None:
    """The episode set of the page that holds the episodes of `file` (an eval report's
    eval.json: its trajectories.jsonl; a held-out report: its heldout/ set)."""
    want = file.parent / "trajectories.jsonl"
    return next((s.id for s in src.sets if s.index.path == want), None)


def comparison(a: RunSource, b: RunSource) -> dict[str, Any]:
    """Per task resolved in A and in B (the share of runs) and the paired statistics of
    `swe-aem compare` (the same function, its default resamples and seed), or why there are
    none. Two training runs without held-out reports have their curves only (no error)."""
    from swe_aem.eval.estimators import paired_compare
    from swe_aem.eval.runs import load_runs

    fa, fb = eval_file(a), eval_file(b)
    if fa is None or fb is None:
        if a.kind == "train" and b.kind == "train":
            return {"note": "a held-out report after RL is missing in one run or both: the curves only"}
        missing = " and ".join(n for n, f in (("A", fa), ("B", fb)) if f is None)
        return {"error": f"no graded evaluation to compare in {missing} (an eval report, or a training "
                         "run's held-out report after RL; a rollout output has none)"}
    try:
        runs_a, runs_b = load_runs(fa), load_runs(fb)
    except (ValueError, FileNotFoundError) as exc:  # a malformed record: shown on the page
        return {"file_a": str(fa), "file_b": str(fb), "error": f"cannot read the graded runs: {exc}"}
    tasks = sorted({i for r in runs_a for i in r} | {i for r in runs_b for i in r})

    def rate(runs, task):
        seen = [bool(r[task]) for r in runs if task in r]
        return sum(seen) / len(seen) if seen else None

    out: dict[str, Any] = {"file_a": str(fa), "file_b": str(fb), "runs_a": len(runs_a), "runs_b": len(runs_b),
                           "set_a": set_of(a, fa), "set_b": set_of(b, fb),
                           "tasks": [{"task": t, "a": rate(runs_a, t), "b": rate(runs_b, t)} for t in tasks]}
    try:
        out["paired"] = paired_compare(runs_a, runs_b, name_a=str(fa), name_b=str(fb)).to_dict()
    except ValueError as exc:
        out["error"] = f"no paired statistics: {exc}"
    return out


def run(args: argparse.Namespace) -> int:
    from swe_aem.view.site import Site, serve, write_site

    sources = [RunSource(args.run)] + ([RunSource(args.run_b)] if args.run_b else [])
    compare = comparison(*sources) if len(sources) == 2 else None
    if args.port is not None:
        serve(Site(sources, compare, live=True), args.host, args.port)
        return 0
    out = args.out or sources[0].folder / "view"
    index = write_site(Site(sources, compare), out)
    print(f"swe-aem view: wrote {out} ({folder_size(out / 'data') / 1e6:.1f} MB of data); open "
          f"file://{index.resolve()}")
    return 0

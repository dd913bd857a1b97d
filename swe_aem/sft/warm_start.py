"""The SFT warm start of a training run: demonstrations -> SFT -> a cached model folder.

RL from a model that never writes a patch has no reward to learn from; the field
trains SFT-then-RL. `warm_start` demonstrates a seeded draw of tasks (gold patches
run as tool calls in real containers, kept when graded resolved), fine-tunes the
model on them and caches the result under a key of everything that shapes it: the
base weights, the prompts and tool schemas, the tasks, the SFT settings. A second run
with the same inputs reuses the folder; a run cut short leaves only a `.partial`
folder, never a cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from swe_aem.config import WarmStartConfig
from swe_aem.errors import RunError
from swe_aem.isolate import call_in_child

if TYPE_CHECKING:
    from swe_aem.sft.trainer import SftConfig

# bump when demonstrations or SFT change in a way the key cannot see
# (3: demonstrations graded on a diff that sees same-second edits; 4: generated tasks
# are located from a failing test: run it, grep the def, view from there; 5: a view
# past the end of the file shows up to its last line instead of failing, and a
# demonstration with a failed tool call is not kept; 6: the edit's old_str is just the
# changed lines, not the diff's hunk with its context; 7: the function is named as "the
# traceback ends in" when a frame of the package shows it; 8: only when the package's
# last frame is the function's; 9: the failing test runs with `-qq`, whose output has no
# timing line, so a rebuild sees the same tokens, and SFT reads the demonstrations in
# instance order, not in the order their containers finished)
FORMAT_VERSION = 9


class WarmStartError(RunError, RuntimeError):
    """The warm start could not be built; the message says which part failed."""


def warm_start_errors() -> tuple[type[Exception], ...]:
    """What `warm_start` raises for bad input or infrastructure: a caller reports these and
    stops (each names its problem); anything else is a bug."""
    from swe_aem.data.instances import DatasetError
    from swe_aem.policy.models import ModelUnavailableError
    from swe_aem.sandbox import SandboxError

    return WarmStartError, DatasetError, SandboxError, ModelUnavailableError


@dataclass(frozen=True)
class WarmStart:
    model_dir: Path
    task_ids: list[str]  # the demonstrated (resolved) instances
    cached: bool
    summary: dict


def run_overrides(cfg: WarmStartConfig, ws: WarmStart) -> list[str]:
    """Config overrides that make an RL run start from the warm start's model folder and,
    with rl_on_demo_tasks, train on the tasks it demonstrated (so RL has reward to learn from)."""
    extra = [f"model={ws.model_dir}"]
    if cfg.rl_on_demo_tasks:
        extra += [f"run.dataset={cfg.dataset}", f"run.split={cfg.split}",
                  f"run.instance_ids=[{','.join(ws.task_ids)}]"]
    return extra


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(model_dir: Path, instances: list, cfg: WarmStartConfig, seed: int) -> str:
    """Hash of the base weights, the prompt files, the tasks and the SFT settings."""
    from swe_aem.agent.toolcalls import PROMPT_DIR

    h = hashlib.sha256(f"warm-start v{FORMAT_VERSION}\n".encode())
    for f in sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]:
        h.update(f.name.encode() + _file_digest(f).encode())
    for f in sorted(PROMPT_DIR.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    for inst in sorted(instances, key=lambda i: i.instance_id):
        h.update(json.dumps([inst.instance_id, inst.patch, inst.problem_statement, inst.image]).encode())
    sft = {k: v for k, v in asdict(cfg).items() if k in ("epochs", "lr", "batch_episodes")}
    h.update(json.dumps({**sft, "seed": seed}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def warm_start(cfg: WarmStartConfig, model: str, *, seed: int = 0, progress: bool = True) -> WarmStart:
    """The warm-started model folder for `model`: from the cache, or demonstrated and trained now.
    A failure of its own parts (a patch, the tokenizer, the SFT engine) is a WarmStartError."""
    known = warm_start_errors()
    try:
        return _warm_start(cfg, model, seed=seed, progress=progress)
    except known:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise WarmStartError(f"warm start: {exc.args[0] if exc.args else exc}") from exc


def _fit(sft: SftConfig, work: Path, episodes: list, progress: bool) -> dict:
    """SFT on the demonstrations into work/model (called in a process of its own)."""
    from swe_aem.sft.trainer import SftTrainer

    return SftTrainer(sft, work).fit(episodes, progress=progress)


def _warm_start(cfg: WarmStartConfig, model: str, *, seed: int, progress: bool) -> WarmStart:
    from swe_aem.agent.trajectory import read_episodes
    from swe_aem.data import load_instances
    from swe_aem.policy.models import PRESET_FILE, base_preset_name, resolve_model
    from swe_aem.sft.demos import make_demonstrations
    from swe_aem.sft.trainer import SftConfig

    base = base_preset_name(model)
    _, base_dir = resolve_model(model)
    every = load_instances(cfg.dataset, split=cfg.split)
    chosen = set(cfg.draw(every, seed, "warm_start"))
    instances = [i for i in every if i.instance_id in chosen]
    root = Path(cfg.cache_dir).expanduser()
    folder = root / f"{base}-{cache_key(base_dir, instances, cfg, seed)}"
    done = folder / "warm_start.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        return WarmStart(folder / "model", summary["task_ids"], cached=True, summary=summary)

    work = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.monotonic()
    report = make_demonstrations(instances, model, work / "demos.jsonl", progress=progress)
    if not report.kept:
        raise WarmStartError(f"warm start: no demonstration of {len(instances)} tasks was resolved "
                           f"(first: {next(iter({**report.rejected, **report.dropped}.items()), None)})")
    demo_s = time.monotonic() - t0
    # in instance order: the file is in the order the demonstrations finished, which varies
    episodes = sorted(read_episodes(work / "demos.jsonl"), key=lambda ep: ep.instance_id)
    sft = SftConfig(model=model, lr=cfg.lr, epochs=cfg.epochs, batch_episodes=cfg.batch_episodes, seed=seed)
    # its own process: the RL trainer builds its engine next, and the SFT engine's memory
    # is not given back while this process lives
    fit = call_in_child(_fit, sft, work, episodes, progress, name="the warm start's SFT")
    (work / "model" / PRESET_FILE).write_text(base + "\n")
    summary = {"base_model": str(base_dir), "preset": base, "tasks": len(instances),
               "task_ids": sorted(ep.instance_id for ep in episodes), "rejected": report.rejected,
               "dropped": report.dropped, "demo_s": demo_s, "sft": {**fit, "model": str(folder / "model")},
               "settings": {**asdict(cfg), "seed": seed}}
    (work / "warm_start.json").write_text(json.dumps(summary, indent=1))
    if folder.exists():  # another run finished the same warm start meanwhile
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.replace(work, folder)
    return WarmStart(folder / "model", summary["task_ids"], cached=False, summary=summary)

"""`swe-aem train`: one command for a laptop and a cluster.

On one process (CPU, or one GPU) it trains in place. When the model preset asks
for several GPUs, `--nproc N` asks for N processes, or a hostfile is given, and
no launcher started us, it re-executes itself under the DeepSpeed (or torchrun)
launcher, which sets RANK / WORLD_SIZE for every process on every node. On CPU
the ranks talk over gloo: `--nproc 2` runs the cluster's data-parallel path on
a laptop.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from swe_aem.commands.plan import add_cluster_arguments, check_before_launch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model preset (tiny, 1.5b, 7b, 14b, 32b, qwen3-32b) or a local folder")
    p.add_argument("--algo", default=None, help="configs/algo/NAME.yaml: grpo, rloo, grpo_aem, rloo_aem")
    p.add_argument("--recipe", default=None, help="configs/recipe/NAME.yaml, e.g. deepswe, deepswe_aem")
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/<run.name or model-algo>")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    add_launch_arguments(p)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. rollout.agent.max_turns=8)")


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """How the ranks are launched and the machines planned for: `swe-aem train`'s, and
    `swe-aem reproduce`'s, which hands them on to a `swe-aem train` per arm (launch_flags)."""
    p.add_argument("--launcher", choices=["auto", "deepspeed", "torchrun", "none"], default="auto")
    p.add_argument("--hostfile", default=None, help="DeepSpeed hostfile for multi-node runs")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs in all (default: the preset's)")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel processes on this node (default: one per GPU the run uses); "
                        "on CPU each is a gloo rank")
    add_cluster_arguments(p)  # the plan before the launch (swe-aem plan); default: this machine's GPUs


def launch_flags(args: argparse.Namespace) -> list[str]:
    """The command-line flags that give a `swe-aem train` the launch and cluster of `args`
    (parsed by add_launch_arguments)."""
    out = ["--launcher", args.launcher]
    for flag, value in (("--hostfile", args.hostfile), ("--num-gpus", args.num_gpus), ("--nproc", args.nproc),
                        ("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node),
                        ("--gpu-memory-gib", args.gpu_memory_gib)):
        if value is not None:
            out += [flag, str(value)]
    return out


def processes_per_node(args: argparse.Namespace, gpus: int) -> int:
    """`--nproc` when given, else min(gpus, GPUs visible here) (at least 1).

    `gpus` is the preset's total; a hostfile (DeepSpeed's `host slots=N` format)
    spreads the rest over nodes.
    """
    if args.nproc is not None:
        return args.nproc
    import torch

    return max(1, min(gpus, torch.cuda.device_count() or gpus))


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The arguments every launched rank gets: the run's, not the launch's (a rank
    started by a launcher has LOCAL_RANK set and trains in place)."""
    out: list[str] = []
    for flag, value in (("--model", args.model), ("--algo", args.algo), ("--recipe", args.recipe),
                        ("--run-dir", args.run_dir)):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--resume"] if args.resume else []) + list(args.overrides)


def _launch_command(args: argparse.Namespace, per_node: int,
                    split: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> list[str]:
    """The launcher command that re-runs this command as `per_node` ranks per node.

    `split`: (the server's GPUs, the trainer's) on node 0 under placement=split, where the
    trainer's ranks keep off the server's GPUs (DeepSpeed's --include / --exclude; torchrun
    gets CUDA_VISIBLE_DEVICES from the caller). Tested here on CPU with 2 ranks (gloo)
    through both launchers; multi-GPU and multi-node launches are untested (no GPUs).
    """
    port = os.environ.get("MASTER_PORT", "29500")
    # the launchers' modules under this interpreter: the ranks get the same environment
    if args.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}", f"--nnodes={os.environ.get('NNODES', '1')}",
                f"--node_rank={os.environ.get('NODE_RANK', '0')}",
                f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
                f"--master_port={port}", "-m", "swe_aem.commands.train", *_child_argv(args)]
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", f"--master_port={port}",
           "--no_local_rank"]  # the ranks read LOCAL_RANK from the environment
    if split is not None and args.hostfile:
        from swe_aem.commands.plan import hostfile_hosts

        first = hostfile_hosts(args.hostfile)[0][0]
        cmd += [f"--hostfile={args.hostfile}", f"--exclude={first}:{','.join(map(str, split[0]))}"]
    elif split is not None:
        cmd += [f"--include=localhost:{','.join(map(str, split[1]))}"]
    else:
        cmd += [f"--hostfile={args.hostfile}"] if args.hostfile else [f"--num_gpus={per_node}"]
    return cmd + ["--module", "swe_aem.commands.train", *_child_argv(args)]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swe_aem.config import ConfigError, load_config
    from swe_aem.policy.models import ModelUnavailableError

    console = Console(stderr=True)
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    try:
        cfg = load_config(args.algo, args.recipe, overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    # the arguments first: no plan or launch for a command that cannot run
    if args.nproc is not None and args.nproc < 1:
        console.print(f"[red]error:[/red] --nproc must be >= 1 (got {args.nproc})")
        return 2
    if args.launcher == "none" and "LOCAL_RANK" not in os.environ and (args.nproc or 1) > 1:
        console.print(f"[red]error:[/red] --nproc {args.nproc} needs a launcher; drop --launcher none")
        return 2
    from swe_aem.policy.models import load_preset, preset_names

    preset = None
    if cfg.model in preset_names():
        preset = load_preset(cfg.model)
    # before any launch or warm start (not again in each launched rank): refuse what cannot fit
    plan = None
    if "LOCAL_RANK" not in os.environ:
        given = len(args.overrides)
        fits, plan = check_before_launch([cfg], args, console, hostfile=args.hostfile)
        if not fits:
            return 1
        if args.overrides[given:]:  # what the host plan sized (each server's KV cache)
            cfg = load_config(args.algo, args.recipe, [*overrides, *args.overrides[given:]])
    # placement=split: the trainer's ranks keep off the server's GPUs (node 0's first ones);
    # torchrun runs once per node (NODE_RANK), DeepSpeed's launcher once for all from node 0
    node = int(os.environ.get("NODE_RANK", "0")) if args.launcher == "torchrun" else 0
    split = (plan.gpus_of("rollout"), plan.gpus_of("trainer", node)) \
        if plan is not None and plan.placement == "split" and cfg.run.vllm_url is None else None
    if split is not None and args.launcher == "none":
        console.print(f"[red]error:[/red] placement=split puts the trainer on GPUs {split[1]} of node 0: "
                      "it needs a launcher; drop --launcher none")
        return 2
    if "LOCAL_RANK" not in os.environ:
        # every refusal of the config (no GPU, an uncorrected async recipe, a LoRA option, a KL
        # term) before a warm start's SFT or a launch, not minutes later in each rank
        # (the pure half of the trainer's resolve_run: no model files, no hardware check here)
        from swe_aem.commands.plan import preset_of
        from swe_aem.errors import SweAemError
        from swe_aem.train.resolve import resolved

        try:
            resolved(cfg, preset_of(cfg.model)[0])
        except SweAemError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    if cfg.warm_start.enabled and not cfg.run.replay and "LOCAL_RANK" not in os.environ:
        # before any launch: the ranks all start from the warm-started folder
        from swe_aem.sft.warm_start import warm_start_errors
        from swe_aem.train.resolve import check_hardware
        from swe_aem.train.rollouts import TrainingSetupError

        try:
            if preset is not None:
                check_hardware(preset)
            cfg = _warm_start(cfg, args, console)
        except (TrainingSetupError, ConfigError, *warm_start_errors()) as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    gpus = args.num_gpus or (preset.num_gpus if preset else 0)
    per_node = processes_per_node(args, gpus) if split is None or args.nproc else len(split[1])
    launched = "LOCAL_RANK" in os.environ
    if args.launcher != "none" and not launched and (per_node > 1 or args.hostfile or split):
        cmd = _launch_command(args, per_node, split)
        if split is not None and args.launcher == "torchrun":
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, split[1]))
        import torch

        if not torch.cuda.is_available():  # CPU ranks share the cores instead of oversubscribing them
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // per_node)))
        console.print(f"launching: {' '.join(cmd)}")
        os.execvp(cmd[0], cmd)

    name = cfg.run.name or f"{preset.name if preset else Path(cfg.model).name}-{args.recipe or args.algo or 'default'}"
    run_dir = args.run_dir or Path(cfg.run.out_dir) / name
    ckpts = run_dir / "checkpoints"
    if not args.resume and ckpts.is_dir() and any(ckpts.glob("step-*")):
        console.print(f"[red]error:[/red] {run_dir} already holds checkpoints; pass --resume to "
                      "continue it or choose another run.name / --run-dir")
        return 2

    from swe_aem.data.instances import DatasetError
    from swe_aem.eval.evaluate import write_rollout_report
    from swe_aem.sandbox import DockerUnavailableError
    from swe_aem.train.checkpoint import CheckpointError
    from swe_aem.train.loop import Trainer
    from swe_aem.train.rollouts import TrainingSetupError

    # SIGTERM (a scheduler, Ctrl-C's cousin) unwinds normally: the vLLM server and
    # the sandboxes are stopped in Trainer.close instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        trainer = Trainer(cfg, run_dir, resume=args.resume, heldout_report=write_rollout_report)
        state = trainer.train()
    except (TrainingSetupError, ModelUnavailableError, DockerUnavailableError, CheckpointError,
            DatasetError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        from swe_aem.train.ranks import leave_process_group

        leave_process_group()
        return 1
    console.print(f"done: {state.step} steps, {state.episodes_seen} episodes -> {run_dir}")
    if trainer.is_main:
        from swe_aem.train.metrics import plot_run

        console.print(f"curves: {plot_run(run_dir)}")
        console.print(f"view: swe-aem view {run_dir}  (writes {run_dir / 'view'}/index.html; "
                      "--port 8000 serves it, refreshing as a run writes)")
    return 0


def _warm_start(cfg, args: argparse.Namespace, console):
    """Run (or reuse) the SFT warm start; the run then trains from its model folder and,
    with warm_start.rl_on_demo_tasks, on the tasks it demonstrated."""
    from swe_aem.config import load_config
    from swe_aem.sft.warm_start import run_overrides, warm_start

    ws = warm_start(cfg.warm_start, cfg.model, seed=cfg.trainer.seed)
    console.print(f"warm start {'(cached) ' if ws.cached else ''}{ws.model_dir}: SFT on "
                  f"{len(ws.task_ids)} demonstrations, loss {ws.summary['sft']['first_loss']:.3f} -> "
                  f"{ws.summary['sft']['last_loss']:.3f}")
    args.model = str(ws.model_dir)
    args.overrides = [*args.overrides, *run_overrides(cfg.warm_start, ws)]
    return load_config(args.algo, args.recipe, [*args.overrides])


def main() -> int:  # entry for launchers (`python -m swe_aem.commands.train ...`)
    p = argparse.ArgumentParser(prog="swe-aem train")
    add_arguments(p)
    return run(p.parse_args(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())

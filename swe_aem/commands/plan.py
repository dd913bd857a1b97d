"""`swe-aem plan`: what a GPU run would start, where, and whether its memory fits, before launching.

The computation is swe_aem.plan (pure); this half reads the config, the preset and the
machine's GPUs. `swe-aem train` and `swe-aem reproduce` call `check_before_launch` first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model preset or folder (default: the recipe's / config's)")
    p.add_argument("--recipe", default=None, help="configs/recipe/NAME.yaml, e.g. deepswe")
    p.add_argument("--algo", default=None, help="configs/algo/NAME.yaml")
    add_cluster_arguments(p)
    p.add_argument("--placement", choices=["colocated", "split"], default=None,
                   help="vLLM on the trainer's GPUs (asleep while it trains) or on its own (default: the preset's)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. vllm.sleep_mode=false)")


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=None, help="nodes (default 1, or the hostfile's)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: the GPUs visible here")
    p.add_argument("--gpu-memory-gib", type=float, default=None, help="default: GPU 0's memory here")


def run(args: argparse.Namespace) -> int:
    from swe_aem.config import load_config
    from swe_aem.errors import SweAemError
    from swe_aem.plan import PlanError, format_plan, make_plan
    from swe_aem.plan.host import format_host_plan
    from swe_aem.train.resolve import resolved

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    if args.placement:
        overrides.append(f"placement={args.placement}")
    try:
        cfg = load_config(args.algo, args.recipe, overrides)
        preset, path = preset_of(cfg.model)
        # what the trainer would refuse (train/resolve.py), refused here too, with its defaults
        cfg, preset, _ = resolved(cfg, preset)
        cluster = cluster_of(args)
        if cluster is None:  # no GPU and none named: this machine's host RAM
            host = host_plan_here(cfg)
            if host is None:
                raise PlanError("no GPU is visible here: give --gpus-per-node and --gpu-memory-gib "
                                "(and --nodes) of the machines to plan for")
            print(json.dumps(host.to_json(), indent=1) if args.json else format_host_plan(host))
            return 0 if host.fits else 1
        plan = make_plan(cfg, preset, cluster, model_path=path)
    except (SweAemError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}")
        return 2
    print(json.dumps(plan.to_json(), indent=1) if args.json else format_plan(plan))
    return 0 if plan.fits else 1


def host_plan_here(cfg):
    """The host-RAM plan of a CPU run on this machine (swe_aem.plan.host): its memory, Ray's
    threshold (RAY_memory_usage_threshold); None where it does not apply (a GPU preset, or a
    fleet on a Ray cluster of other nodes: run.ray_address)."""
    import os

    from swe_aem.hostmem import node_memory
    from swe_aem.plan.host import RAY_THRESHOLD, host_plan

    preset, _ = preset_of(cfg.model)
    if preset.num_gpus > 0 or cfg.run.ray_address is not None or preset.architecture is None:
        return None
    threshold = float(os.environ.get("RAY_memory_usage_threshold", RAY_THRESHOLD))
    total, available = node_memory()  # a shared node: what others use counts against the threshold
    return host_plan(cfg, preset, node_bytes=total, threshold=threshold, others_bytes=total - available)


def preset_of(model: str):
    """(preset, folder) of `--model` without preparing anything: a preset name or a folder."""
    from swe_aem.policy.models import base_preset_name, load_preset, preset_for_folder

    if Path(model).expanduser().is_dir():
        preset = preset_for_folder(model, base=base_preset_name(model))
        return preset, Path(preset.local_path)
    preset = load_preset(model)
    return preset, preset.default_path


def cluster_of(args: argparse.Namespace, hostfile: str | None = None):
    """The machines to plan for: the flags, else the hostfile's nodes and this machine's GPUs;
    None when neither flags nor GPUs say (a CPU-only run)."""
    from swe_aem.plan import Cluster

    nodes, per_node, memory = args.nodes, args.gpus_per_node, args.gpu_memory_gib
    if hostfile and (nodes is None or per_node is None):
        hosts, slots = hostfile_shape(hostfile)
        nodes = hosts if nodes is None else nodes
        per_node = slots if per_node is None else per_node
    if per_node is None or memory is None:
        here = local_gpus()
        if here is None:
            if nodes is None and per_node is None:
                return None
            from swe_aem.plan import PlanError

            missing = [f for f, v in (("--gpus-per-node", per_node), ("--gpu-memory-gib", memory)) if v is None]
            raise PlanError(f"no GPU is visible here to read them from: give {' and '.join(missing)}")
        per_node = here[0] if per_node is None else per_node
        memory = here[1] if memory is None else memory
    return Cluster(nodes or 1, per_node, memory)


def local_gpus() -> tuple[int, float] | None:
    """(GPUs visible, GiB of GPU 0) here, or None without a GPU."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    return torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory / 1024**3


def hostfile_hosts(path: str) -> list[tuple[str, int]]:
    """(host, slots) of each line of a DeepSpeed hostfile (`host slots=N`), in order."""
    hosts = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            hosts.append((line.split()[0], int(fields.get("slots", 1))))
    if not hosts:
        raise ValueError(f"hostfile {path} names no host")
    return hosts


def hostfile_shape(path: str) -> tuple[int, int]:
    """(hosts, slots of the smallest) of a DeepSpeed hostfile."""
    hosts = hostfile_hosts(path)
    return len(hosts), min(slots for _, slots in hosts)


def check_before_launch(cfgs: list, args: argparse.Namespace, console,
                        hostfile: str | None = None) -> tuple[bool, object]:
    """Plan the run(s) on the machines the flags or this machine's GPUs describe and print
    it: (False, plan) when one does not fit (refuse), else (True, the first plan). On a
    CPU-only run without flags, says so and passes with no plan (a CPU run has no GPU
    memory to plan)."""
    from swe_aem.plan import PlanError, format_plan, make_plan

    try:
        cluster = cluster_of(args, hostfile)
    except (PlanError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return False, None
    if cluster is None:
        return check_host(cfgs, args, console), None
    shown, first = None, None
    for cfg in cfgs:
        try:
            preset, path = preset_of(cfg.model)
            plan = make_plan(cfg, preset, cluster, model_path=path)
        except (PlanError, KeyError) as exc:
            console.print(f"plan: not made ({exc.args[0]}); launching without one")
            return True, None
        first = first or plan
        text = format_plan(plan)
        if text != shown:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
            shown = text
        if not plan.fits:
            console.print("[red]error:[/red] the plan does not fit (above: the numbers and what to change); "
                          "not launching", soft_wrap=True)
            return False, plan
    return True, first


def check_host(cfgs: list, args: argparse.Namespace, console) -> bool:
    """A CPU run's host-RAM plan on this machine, printed: False when it does not fit (refuse).
    A KV cache the plan sized (vllm.kv_cache_gib null) becomes an override in `args.overrides`,
    so the servers start with it (in launched ranks and after the warm start too)."""
    from swe_aem.plan.host import HostPlanError, format_host_plan

    for cfg in cfgs:
        try:
            host = host_plan_here(cfg)
        except (HostPlanError, KeyError) as exc:
            console.print(f"plan: not made ({exc.args[0]}); launching without one")
            return True
        if host is None:
            console.print("plan: not applicable (no GPU visible and no --nodes / --gpus-per-node): skipped")
            return True
        console.print(format_host_plan(host), markup=False, highlight=False, soft_wrap=True)
        if not host.fits:
            console.print("[red]error:[/red] the run does not fit this machine's memory (above: the numbers "
                          "and what to change); not launching", soft_wrap=True)
            return False
        if host.kv_sized and cfg.vllm.kv_cache_gib is None and hasattr(args, "overrides"):
            args.overrides = [*args.overrides, f"vllm.kv_cache_gib={host.kv_cache_gib}"]
    return True

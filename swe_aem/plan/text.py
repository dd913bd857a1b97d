"""The plan as text for a terminal (`swe-aem plan`, and before `train` / `reproduce`)."""

from __future__ import annotations

from swe_aem.plan.layout import Plan
from swe_aem.plan.memory import GIB


def format_plan(plan: Plan) -> str:
    c, s, t = plan.cluster, plan.settings, plan.trainer
    sleep = ("vLLM sleeps while the trainer runs" if plan.sleep_mode else "no sleep mode") \
        if plan.placement == "colocated" else "disjoint GPUs"
    nodes = f"{c.nodes} node{'s' if c.nodes > 1 else ''}"
    lines = [(f"plan: {plan.model} ({plan.params / 1e9:.2f}B parameters) on {nodes} x "
              f"{c.gpus_per_node} GPUs x {c.gpu_memory_gib:g} GiB; placement {plan.placement} ({sleep})"),
             f"trainer: ZeRO-{s.zero_stage} over {t.world} ranks"
             + (f", LoRA rank {s.lora_rank} (base frozen)" if plan.lora is not None else "")
             + (", parameters on CPU" if s.offload_params and s.zero_stage >= 3 else "")
             + (", optimizer on CPU" if s.offload_optimizer else "")
             + (", gradient checkpointing" if s.gradient_checkpointing else "")
             + f"; longest micro-batch {t.rows} x {t.longest:,} tokens",
             "sampling: " + ", ".join(f"{k} {v}" for k, v in plan.sampling.items()),
             "processes:"]
    for p in plan.processes:
        if p.command:
            lines.append(f"  {p.name:<20} {f'node {p.node} GPU {p.cuda_visible_devices}':<26} {p.shell()}")
    runs: list[list] = []  # trainer processes of consecutive nodes with the same GPUs: one line
    for p in plan.processes:
        if p.role == "trainer":
            if runs and runs[-1][-1].gpus == p.gpus and runs[-1][-1].node == p.node - 1:
                runs[-1].append(p)
            else:
                runs.append([p])
    for run in runs:
        first, last = run[0], run[-1]
        nodes_of = f"{first.node}" if first is last else f"{first.node}-{last.node}"
        where = f"node {nodes_of} GPU {first.cuda_visible_devices}"
        name = f"trainer ranks {first.ranks[0]}-{last.ranks[-1]}"
        lines.append(f"  {name:<20} {where:<26} CUDA_VISIBLE_DEVICES={first.cuda_visible_devices}"
                     + (f" on each node ({len(first.gpus)} ranks a node)" if first is not last else ""))
    lines.append(f"memory per GPU (GiB; {c.gpu_memory_gib:g} each):")
    for grp in plan.groups:
        lines.append(f"  {grp.label()} [{grp.holds}]: peak {grp.peak / GIB:.1f} "
                     f"{'fits' if grp.fits else 'DOES NOT FIT'}")
        for ph in grp.phases:
            lines.append(f"    {ph.name}: {ph.bytes / GIB:.1f}")
            for i in ph.items:
                lines.append(f"      {i.what:<22} {i.gib:6.1f}  {i.how}")
    if plan.lora is not None:
        a = plan.lora
        lines.append(f"LoRA (GiB): {a.params:,} adapter parameters on {', '.join(a.targets)} "
                     f"({a.params / a.base_params:.2%} of the {a.base_params / 1e9:.2f}B frozen base)")
        for i in a.items():
            lines.append(f"      {i.what:<22} {i.gib:6.2f}  {i.how}")
    lines += ["notes:", *(f"  - {n}" for n in plan.notes)]
    if plan.fits:
        lines.append("fits: yes")
    else:
        lines.append("fits: NO")
        lines += [f"  - {p}" for p in plan.problems]
    return "\n".join(lines)

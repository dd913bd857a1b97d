"""The plan of a GPU run before its launch: processes, GPUs, memory per GPU, fits or not.

Pure computation (no I/O, nothing started): `make_plan(cfg, preset, cluster)`, printed by
`swe-aem plan` and checked by `swe-aem train` / `reproduce` before they launch.
"""

from swe_aem.plan.layout import (
           Cluster,
           GpuGroup,
           Phase,
           Plan,
           PlanError,
           Process,
           make_plan,
           run_preset,
)
from swe_aem.plan.memory import (
           GIB,
           AdapterMemory,
           Item,
           TrainerMemory,
           TrainerSettings,
           VllmMemory,
           adapter_params,
           run_lora,
)
from swe_aem.plan.text import format_plan

__all__ = ["GIB", "AdapterMemory", "Cluster", "GpuGroup", "Item", "Phase", "Plan", "PlanError", "Process",
           "TrainerMemory", "TrainerSettings", "VllmMemory", "adapter_params", "format_plan", "make_plan",
           "run_lora", "run_preset"]

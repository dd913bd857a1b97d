"""A rollout fleet on Ray: replicas (a policy server and an agent harness each) as Ray actors
in placement groups, driven by the trainer's rank 0 (`Fleet`).

On the agent, policy and sandbox packages; grading reaches a replica as a factory in its
`ReplicaSpec` (built on the replica's own grading pool), so the fleet never imports reward.
"""

from swe_aem.fleet.driver import Fleet, FleetError, FleetStats
from swe_aem.fleet.replica import ReplicaSpec, RolloutReplica

__all__ = ["Fleet", "FleetError", "FleetStats", "ReplicaSpec", "RolloutReplica"]

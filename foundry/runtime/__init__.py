"""The virtual-actor runtime: logical actors (instances) hosted in a few shard processes.

Role code (``actors/<role>/``) sees only `foundry.runtime.role` and `foundry.runtime.context`; Ray is
imported only in `foundry.runtime.ray_backend`.
"""

from foundry.runtime.client import ActorRef, Runtime
from foundry.runtime.context import ActionContext, CommandContext, JobContext
from foundry.runtime.events import Event
from foundry.runtime.role import Handler, Role

__all__ = [
    "ActionContext",
    "ActorRef",
    "CommandContext",
    "Event",
    "Handler",
    "JobContext",
    "Role",
    "Runtime",
]

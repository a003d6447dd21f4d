"""The sandbox role, keyed like its task (``<orgId>:<taskId>``; sandboxId == taskId).

The provider runs inside this role's host process: sandbox-agent servers are its children. Only the
task creates (``ensure``) and destroys its sandbox.
"""

from __future__ import annotations

from actors.sandbox import actions, handlers, supervision
from actors.sandbox.commands import Destroy, Empty, Ensure, Exited, Lease, Reclaim, RemoteGit
from actors.sandbox.schema import metadata
from foundry.runtime.role import Handler, Role

ROLE = Role(
    name="sandbox",
    package="sandbox",
    metadata=metadata,
    commands=(Handler("exited", Exited, handlers.handle_exited),),
    actions=(
        Handler("ensure", Ensure, actions.ensure),
        Handler("destroy", Destroy, actions.destroy),
        Handler("status", Empty, actions.get_status),
        Handler("renew", Lease, actions.renew),
        Handler("release", Lease, actions.release),
        Handler("reclaim", Reclaim, actions.reclaim),
        Handler("remote_git", RemoteGit, actions.remote_git),
    ),
    on_host_start=supervision.on_host_start,
    on_host_stop=supervision.on_host_stop,
    on_cluster_stop=supervision.on_cluster_stop,
)

"""Which host process runs which hosts (``runtime.placement``).

A host is one shard of one role; a host process is one Ray actor (a Python process) running one or
more hosts. Several hosts per process keep the footprint small: every process imports the whole
application (about 100 MB and seconds of CPU before it answers), so one process per role cost seven
processes before any actor woke.
"""

from __future__ import annotations

from foundry.config import Settings
from foundry.errors import InvalidInput
from foundry.runtime.role import available_roles

#: A host: (role, shard).
HostId = tuple[str, int]
#: The Ray node label naming the data volume a node holds (``runtime.nodes``).
DATA_LABEL = "foundry-data"


def process_name(name: str) -> str:
    """The Ray actor name of host process ``name``."""
    return f"foundry.{name}"


def all_roles(settings: Settings) -> list[str]:
    """Every role this deployment hosts: the product's and any extra (test) roles."""
    return available_roles() + [r for r in settings.runtime.extra_roles if r not in available_roles()]


def all_hosts(settings: Settings) -> list[HostId]:
    """Every (role, shard) of this deployment, in a stable order."""
    shards = settings.runtime.shards_for
    return [(role, shard) for role in all_roles(settings) for shard in range(shards(role))]


def process_of(settings: Settings, role: str, shard: int) -> str:
    """The name of the process that runs host (role, shard): its shard's entry, its role's, or the
    default process."""
    placement = settings.runtime.placement
    return placement.get(f"{role}.{shard}") or placement.get(role) or settings.runtime.default_process


def hosts_by_process(settings: Settings) -> dict[str, list[HostId]]:
    """Each process that runs at least one host, with its hosts."""
    out: dict[str, list[HostId]] = {}
    for role, shard in all_hosts(settings):
        out.setdefault(process_of(settings, role, shard), []).append((role, shard))
    return out


def check_placement(settings: Settings) -> None:
    """Refuse a placement that names a role or shard this deployment does not have (a typo would
    otherwise silently leave that role in the default process)."""
    roles = set(all_roles(settings))
    for host in settings.runtime.placement:
        role, _, shard = host.partition(".")
        if role not in roles:
            raise InvalidInput(
                f"runtime.placement names unknown role {role!r}; roles are {', '.join(sorted(roles))}"
            )
        count = settings.runtime.shards_for(role)
        if shard and int(shard) >= count:
            raise InvalidInput(f"runtime.placement names {host!r} but {role} has {count} shard(s)")


def node_label_of(settings: Settings, process: str) -> str | None:
    """The ``foundry-data`` label value of the node that must run ``process``, if it is pinned."""
    return settings.runtime.nodes.get(process)


def check_nodes_named(settings: Settings) -> None:
    """Refuse a node map naming a process that runs no host (a typo would leave the real process
    free to start on a node without its data)."""
    processes = hosts_by_process(settings)
    for process in settings.runtime.nodes:
        if process not in processes:
            raise InvalidInput(
                f"runtime.nodes names process {process!r}, which runs no host; processes are "
                f"{', '.join(sorted(processes))}"
            )


def missing_node_labels(settings: Settings, nodes: list[dict[str, object]]) -> list[str]:
    """The ``foundry-data`` values that ``runtime.nodes`` names but no live node of ``nodes`` (Ray's
    node table) carries."""
    present = set()
    for node in nodes:
        labels = node.get("Labels")
        if node.get("Alive") and isinstance(labels, dict) and labels.get(DATA_LABEL):
            present.add(str(labels[DATA_LABEL]))
    return sorted({label for label in settings.runtime.nodes.values() if label not in present})

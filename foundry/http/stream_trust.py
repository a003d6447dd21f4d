"""When an API-process cache fed by host event streams may serve and fill its entries.

Shared by the session and membership cache (`foundry.http.auth_cache`) and the snapshot cache
(`foundry.http.snapshot_cache`). A cached answer is only as good as the stream that would tell of its
change, so:

* a host is *trusted* only while its stream is live (registered on the host, not broken, not behind);
  every change of that state bumps the host's *generation*;
* an answer read from an actor may be stored only if the hosts it depends on stayed live in the same
  generation during the read, and no change of its key was heard meanwhile (`Ticket`): an event that
  overtook the read would otherwise be undone by the older answer.

Invalidations are remembered in a bounded LRU; a fill whose read began before the oldest one still
remembered is refused, so the bound costs a cache miss, never a stale entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

#: A host: (role, shard).
Host = tuple[str, int]

#: Invalidations remembered to refuse fills that raced them.
MAX_INVALIDATIONS = 10_000


@dataclass(frozen=True)
class Ticket:
    """Taken before an actor read whose answer may be cached: what the cache knew then."""

    tick: int
    #: (host, its stream generation) for every host the answer depends on.
    hosts: tuple[tuple[Host, int], ...]


class StreamTrust:
    """Live hosts, their generations and recent invalidations (see the module docstring)."""

    def __init__(self, max_invalidations: int = MAX_INVALIDATIONS) -> None:
        self._max_invalidations = max_invalidations
        self._live: set[Host] = set()
        self._generation: dict[Host, int] = {}
        self._tick = 0
        #: key -> tick of its last invalidation; ticks below ``_floor`` are no longer known.
        self._invalidated: OrderedDict[Hashable, int] = OrderedDict()
        self._floor = 0

    @property
    def live_hosts(self) -> list[str]:
        return sorted(f"{role}/{shard}" for role, shard in self._live)

    def is_live(self, host: Host) -> bool:
        return host in self._live

    def trusted(self, hosts: Iterable[Host] | None) -> bool:
        return hosts is not None and all(h in self._live for h in hosts)

    def went_live(self, host: Host) -> None:
        """The host's stream is registered: every change there is heard from now on."""
        self._bump(host)
        self._live.add(host)

    def went_away(self, host: Host) -> bool:
        """The stream broke, stopped or fell behind; returns whether it was live."""
        was_live = host in self._live
        self._live.discard(host)
        self._bump(host)
        return was_live

    def fell_behind(self, host: Host) -> None:
        """The stream stays open but lost events: entries of the host must go; fills begun are void."""
        self._bump(host)

    def begin(self, hosts: tuple[Host, ...] | None) -> Ticket | None:
        """A ticket for a read that depends on ``hosts``; None when they are not all trusted."""
        if hosts is None or not self.trusted(hosts):
            return None
        return Ticket(self._tick, tuple((h, self._generation.get(h, 0)) for h in hosts))

    def may_fill(self, ticket: Ticket | None, *keys: Hashable) -> bool:
        """Whether an answer read under ``ticket`` may be stored under ``keys``."""
        if ticket is None:
            return False
        return (
            all(h in self._live and self._generation.get(h, 0) == gen for h, gen in ticket.hosts)
            and ticket.tick >= self._floor
            and all(self._invalidated.get(k, -1) < ticket.tick for k in keys)
        )

    def invalidate(self, key: Hashable) -> None:
        """Remember that ``key`` changed now, so a fill whose read began earlier is refused."""
        self._invalidated[key] = self._tick
        self._invalidated.move_to_end(key)
        self._tick += 1
        while len(self._invalidated) > self._max_invalidations:
            _, tick = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, tick + 1)

    def _bump(self, host: Host) -> None:
        self._generation[host] = self._generation.get(host, 0) + 1

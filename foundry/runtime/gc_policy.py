"""The cyclic garbage collector's settings for Foundry's long-running processes.

A host records an agent's stream as tens of thousands of small dicts a second, almost all freed by
reference counting the moment their batch is written. With the interpreter's default (a young
collection every 700 allocations, each walking every young object, and full collections walking the
whole heap of Ray, SQLAlchemy and the roles' modules), collections took about a third of a task host's
CPU under a transcript flood, measured as 1.1 to 1.4 s of collector time in a 40,000-event run.
"""

from __future__ import annotations

import gc

#: Allocations between young collections (the default is 700). Cycles still get collected, just in
#: bigger, rarer passes; the memory this lets wait is a few MB.
YOUNG_THRESHOLD = 50_000


def settle_long_lived() -> None:
    """Call once start-up is done: what was loaded so far (modules, settings, the roles) lives as long
    as the process, so it moves out of the collector's scans for good, and young collections become
    rarer."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

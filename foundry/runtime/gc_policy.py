"""The cyclic garbage collector's settings for Foundry's long-running processes.

A host records an agent's stream as tens of thousands of small dicts a second, almost all freed by
reference counting the moment their batch is written. With the interpreter's defaults (a young
collection every 700 allocations, each walking every young object, including a backlog of queued
events), the task host spent 0.63 to 0.70 s inside the collector during the 3.5 to 4 s it took to
record 20 sessions x 2,000 chunks (measured with ``gc.callbacks``, wall time, on a busy 2-core
machine); with these settings, 0.05 to 0.06 s. The loop that reads the agents' streams is stalled
for as long as a collection runs.
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

"""Sandbox slots are shared fairly between organizations on one host process.

A real `Admission` (the queue, caps and eviction every sandbox host uses) in front of a provider
that only records which sandboxes run: what is under test is who gets the next slot, and whose
sandbox is stopped to make room.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.sandbox.admission import Admission, Ticket


@dataclass
class Slots:
    """The provider as admission sees it: which sandboxes run, and which it was asked to stop."""

    running: set[str] = field(default_factory=set)
    stopped: list[str] = field(default_factory=list)
    root_dir: str = "/nonexistent-foundry-test-root"

    def running_ids(self) -> list[str]:
        return sorted(self.running)

    async def stop(self, sandbox_id: str) -> bool:
        self.stopped.append(sandbox_id)
        self.running.discard(sandbox_id)
        return True


@dataclass
class SandboxActors:
    """The runtime as admission uses it: ``reclaim`` on a sandbox actor stops its sandbox."""

    slots: Slots

    async def call(self, role: str, key: str, action: str, body: dict[str, str]) -> dict[str, bool]:
        assert (role, action) == ("sandbox", "reclaim")
        return {"stopped": await self.slots.stop(key.rpartition(":")[2])}


async def _admit(admission: Admission, slots: Slots, sandbox_id: str, org: str) -> Ticket:
    ticket = await admission.admit(sandbox_id, f"{org}:{sandbox_id}", wait=0)
    if ticket is Ticket.ADMITTED:
        slots.running.add(sandbox_id)
        admission.started(sandbox_id)
    return ticket


async def test_one_organizations_burst_takes_turns_with_another_organizations_task():
    slots = Slots()
    admission = Admission(slots, runtime=None, max_starting=1, max_running=2, idle_seconds=3600)
    for n in range(2):  # acme fills both slots
        assert await _admit(admission, slots, f"acme-{n}", "acme") is Ticket.ADMITTED
    for n in range(2, 40):  # and queues 38 more
        assert await _admit(admission, slots, f"acme-{n}", "acme") is Ticket.QUEUED
    assert await _admit(admission, slots, "globex-0", "globex") is Ticket.QUEUED

    # Globex's only task is next in line, not behind acme's 38.
    assert admission.position("globex-0") == 1
    assert admission.position("acme-2") == 2
    slots.running.discard("acme-0")  # a slot frees
    admission.notify()
    assert await _admit(admission, slots, "acme-2", "acme") is Ticket.QUEUED
    assert await _admit(admission, slots, "globex-0", "globex") is Ticket.ADMITTED


async def test_room_is_made_from_the_organization_running_the_most():
    slots = Slots()
    admission = Admission(slots, SandboxActors(slots), max_starting=2, max_running=3, idle_seconds=3600)
    assert await _admit(admission, slots, "globex-0", "globex") is Ticket.ADMITTED
    assert await _admit(admission, slots, "acme-0", "acme") is Ticket.ADMITTED
    assert await _admit(admission, slots, "acme-1", "acme") is Ticket.ADMITTED
    # All idle (their tasks are done with them), globex's the longest: still, acme (two running)
    # gives way for the waiting task.
    for sandbox_id in ("globex-0", "acme-0", "acme-1"):
        admission.release(sandbox_id, "job")
    admission.activity["globex-0"] = 0.0
    assert await _admit(admission, slots, "acme-2", "acme") is Ticket.QUEUED
    for task in list(admission._tasks):
        await task
    assert slots.stopped[0].startswith("acme-"), slots.stopped
    assert "globex-0" in slots.running


async def test_a_task_that_asks_late_under_load_keeps_its_place():
    slots = Slots()
    admission = Admission(slots, runtime=None, max_starting=1, max_running=1, idle_seconds=3600)
    assert await _admit(admission, slots, "acme-0", "acme") is Ticket.ADMITTED
    assert await _admit(admission, slots, "acme-1", "acme") is Ticket.QUEUED
    assert await _admit(admission, slots, "acme-2", "acme") is Ticket.QUEUED
    admission.queue["acme-1"].last_poll -= 60  # its task was busy for a minute before asking again
    assert await _admit(admission, slots, "acme-2", "acme") is Ticket.QUEUED
    assert admission.position("acme-1") == 1


async def test_a_sandbox_its_task_is_still_setting_up_is_not_stopped_to_make_room():
    """On a loaded machine a task's lease can lapse while it clones into its new sandbox; stopping
    that sandbox for a waiting task only sent the first one back to the queue."""
    slots = Slots()
    admission = Admission(slots, SandboxActors(slots), max_starting=2, max_running=1, idle_seconds=3600)
    assert await _admit(admission, slots, "acme-0", "acme") is Ticket.ADMITTED  # no lease held
    assert await _admit(admission, slots, "globex-0", "globex") is Ticket.QUEUED
    for task in list(admission._tasks):
        await task
    assert slots.stopped == []
    admission.release("acme-0", "provision")  # done with it: now it may make room
    assert await _admit(admission, slots, "globex-0", "globex") is Ticket.QUEUED
    for task in list(admission._tasks):
        await task
    assert slots.stopped == ["acme-0"]

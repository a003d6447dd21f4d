"""The task role: one per task (= one branch), key ``<orgId>:<taskId>``; sessions and transcripts."""

from actors.task.naming import split_task_key, task_key

__all__ = ["split_task_key", "task_key"]

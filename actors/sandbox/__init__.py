"""The sandbox role: one per task (key ``<orgId>:<taskId>``), wrapping a provider's sandbox."""

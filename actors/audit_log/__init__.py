"""audit-log: one append-only event log per organization."""

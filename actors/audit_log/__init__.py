"""audit-log: one append-only event log per organization (spec §1.5, §4.17)."""

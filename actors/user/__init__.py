"""user: one per person: profile, GitHub credentials, sessions and per-user UI state."""

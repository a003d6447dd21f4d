"""Sign-in with GitHub, sessions and request authentication."""

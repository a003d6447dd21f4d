"""organization: profile, settings and members of one GitHub account; key ``app`` is the app shell
holding global indexes (installation → organization, OAuth callback results)."""

"""github-data: one GitHub cache per organization — repositories, members, pull requests, CI and branch
heads, review items, webhook deliveries, and the full sync that fills them (spec §1.4, §4.3-§4.5)."""

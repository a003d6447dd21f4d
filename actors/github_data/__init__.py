"""github-data: one GitHub cache per organization — repositories, members, pull requests, CI and branch
heads, review items, webhook deliveries, and the full sync that fills them."""

"""Marketing-video task service: an aiohttp API and a worker on PostgreSQL via PgBouncer."""

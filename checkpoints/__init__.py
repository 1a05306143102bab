"""Postgres persistence: embedded server, connection pool, saver and migrations."""

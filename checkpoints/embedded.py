"""An embedded PostgreSQL (the `pgserver` wheel) for machines without a server."""

from __future__ import annotations

import warnings
from pathlib import Path

from graph.errors import ConfigError


def embedded_url(data_dir: Path, database: str = "postgres") -> str:
    """Start (or reuse) the embedded Postgres in `data_dir` and return its URL.

    The server is shared by every process using the same directory and keeps running
    while any of them does; it listens on a unix socket only.
    """
    pgdata = data_dir / "pgdata"
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime dir it does not use for the socket.
            warnings.simplefilter("ignore")
            import pgserver  # lazily: only needed when no server URL is set

            server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot start the embedded Postgres in {pgdata}: {first}") from None
    return server.get_uri(database)

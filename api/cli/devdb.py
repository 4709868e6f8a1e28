"""An embedded PostgreSQL (pgserver) for `cloudjobs dev` and tests when no database is given."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) a PostgreSQL in `data_dir`; returns its pg8000 URL and the server."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # pgserver may put its socket there, and as root it opens permissions on the
        # folder's parents; a private folder keeps that away from /run. Set before import.
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="cloudjobs-xdg-")
    try:
        import pgserver
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no DATABASE_URL and no embedded PostgreSQL: pip install 'cloudjobs[dev]' "
            "(pgserver has wheels for CPython 3.9-3.12) or set DATABASE_URL"
        ) from e
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir.resolve()), cleanup_mode="stop")
    return pg8000_url(server.get_uri()), server


def pg8000_url(libpq_uri: str) -> str:
    """pgserver's libpq URI (`...?host=/socket/dir`) as a pg8000 URL (`?unix_sock=.../.s.PGSQL.5432`)."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(libpq_uri)
    socket_dir = parse_qs(parts.query)["host"][0]
    database = parts.path.lstrip("/") or "postgres"
    # The socket folder may not be the data folder: Unix socket paths are limited to ~100 bytes.
    return f"postgresql+pg8000://postgres@/{database}?unix_sock={socket_dir}/.s.PGSQL.5432"

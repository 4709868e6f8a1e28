"""Alembic migrations (versions/), and what more than one of them needs."""

from __future__ import annotations


def set_comments(comments: dict[str, str]) -> None:
    """COMMENT ON each target (an object, as COMMENT ON names it) with its text, on any driver."""
    import sqlalchemy as sa
    from alembic import op

    bind = op.get_bind()
    for target, text in comments.items():
        # text(), not exec_driver_sql: psycopg reads a `%` in a string sent with no parameters
        # as a placeholder, and text() escapes it for whichever driver runs it; `\:` keeps a
        # colon in the text from being read as a parameter of text()'s own.
        literal = text.replace("'", "''").replace(":", "\\:")
        bind.execute(sa.text(f"COMMENT ON {target} IS '{literal}'"))

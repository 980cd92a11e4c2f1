"""Shared fixtures: databases for the store (a SQLite file, a PostgreSQL database).

PostgreSQL: one uniquely named database per test session on 127.0.0.1:5432 as user `postgres`
(trust auth), dropped at the end; `SMSGW_TEST_PG` overrides the server's libpq DSN. Tests that
need it skip with the reason when the server cannot be reached, so a laptop without PostgreSQL
still runs the SQLite half.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_DSN = os.environ.get(
    "SMSGW_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
)


def _pg_admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(PG_ADMIN_DSN, autocommit=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session (dropped afterwards)."""
    import psycopg

    try:
        admin = _pg_admin()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable ({PG_ADMIN_DSN}): {exc}".strip())
    name = f"smsgw_test_{os.getpid()}_{secrets.token_hex(4)}"
    user, host, port = admin.info.user, admin.info.host, admin.info.port
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_pg(url: str) -> None:
    """Empty the session database (drop and recreate its public schema)."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a SQLite file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once as a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    url: str = request.getfixturevalue("pg_url")
    reset_pg(url)
    return url

"""The session's PostgreSQL server: where it listens, who can log in, what ``sql`` returns."""

from __future__ import annotations

import pytest
from postgres import Postgres


def test_server_listens_on_loopback_with_durability_off(postgres: Postgres) -> None:
    assert postgres.jdbc_url == f"jdbc:postgresql://127.0.0.1:{postgres.port}/sparkml"
    settings = postgres.sql(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('listen_addresses', 'fsync', 'port', 'TimeZone') ORDER BY name"
    )
    assert settings == [
        ("TimeZone", "UTC"),
        ("fsync", "off"),
        ("listen_addresses", "127.0.0.1"),
        ("port", str(postgres.port)),
    ]
    assert postgres.sql("SELECT current_user, current_database()") == [("sparkml_test", "sparkml")]


def test_sql_returns_text_rows_with_none_for_null(postgres: Postgres) -> None:
    postgres.sql(
        "DROP TABLE IF EXISTS fixture_probe; CREATE TABLE fixture_probe (a int, b text); "
        "INSERT INTO fixture_probe VALUES (2, NULL), (1, 'x|y')"
    )
    assert postgres.sql("SELECT a, b FROM fixture_probe ORDER BY a") == [
        ("1", "x|y"),
        ("2", None),
    ]
    assert postgres.sql("SELECT a FROM fixture_probe WHERE a > 9") == []
    assert postgres.sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [("f",)]
    assert postgres.sql("SELECT current_user", superuser=True) == [("postgres",)]


def test_wrong_password_is_refused(postgres: Postgres) -> None:
    wrong = Postgres(**{**postgres.__dict__, "password": "not-it"})
    with pytest.raises(RuntimeError, match="password authentication failed"):
        wrong.sql("SELECT 1")

"""Passwords never appear in output: the redaction rules, then the runner end to end."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest
import servers  # tests/ is on sys.path (conftest.py)
import sqlalchemy as sa

from deploytools.datamig import ledger
from deploytools.datamig.lock import AdvisoryLock
from deploytools.redact import display_url, redact, url_passwords


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql+psycopg://app:hunter2@db:5432/app",
            "postgresql+psycopg://app:***@db:5432/app",
        ),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:hunter2@cache/1 failed", "rediss://default:***@cache/1 failed"),
        # unencoded "@" and "/" in the password: masked whole, up to the last "@"
        ("postgres://u:pa@ss/w0rd@db/app", "postgres://u:***@db/app"),
        ("DATABASE_URL=postgres://u:p@db", "DATABASE_URL=postgres://u:***@db"),
        ('{"url": "redis://:hunter2@h/0"}', '{"url": "redis://:***@h/0"}'),
        (
            "a postgres://u:one@h1/a and redis://:two@h2/0",
            "a postgres://u:***@h1/a and redis://:***@h2/0",
        ),
        (
            "host=db user=app password=hunter2 dbname=app",
            "host=db user=app password=*** dbname=app",
        ),
        (
            "postgres://db/app?user=u&password=hunter2&ssl=1",
            "postgres://db/app?user=u&password=***&ssl=1",
        ),
        # nothing to hide
        ("postgres://app@db/app", "postgres://app@db/app"),
        ("see https://example.com/a@b", "see https://example.com/a@b"),
        ("no url", "no url"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_redact_known_secrets_anywhere():
    secrets = url_passwords("postgresql://u:s3cr%40t@h/db", None, "redis://:other@h/0")
    assert set(secrets) == {"s3cr%40t", "s3cr@t", "other"}
    text = "the password is s3cr@t (s3cr%40t encoded), redis: other"
    assert redact(text, secrets) == "the password is *** (*** encoded), redis: ***"


def test_display_url():
    assert display_url("postgresql://u:p%40ss@db:5432/app") == "postgresql://u:***@db:5432/app"
    assert display_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert display_url("sqlite:////srv/app/shared/datamig.sqlite3") == (
        "sqlite:////srv/app/shared/datamig.sqlite3"
    )
    assert ledger.LedgerDatabase("postgresql+psycopg://u:pw@h/d").display == (
        "postgresql+psycopg://u:***@h/d"
    )


# --------------------------------------------------------------------------- end to end

_roles = itertools.count(1)

LEAKY = """
import os
import sys

def run(ctx):
    database_url, redis_url = os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
    print("connecting to", database_url)
    print("and", redis_url, file=sys.stderr)
    ctx.log.warning("configured with %s and %s", database_url, redis_url)
    print("raw password:", database_url.split(":")[2].split("@")[0])
"""

FAILS_ON_REDIS = """
import os

def run(ctx):
    try:
        ctx.redis.ping()
    except Exception as error:
        raise RuntimeError(f"Redis at {os.environ['REDIS_URL']} is down: {error}") from error
"""


@pytest.fixture
def secret_database(postgres_server):
    """A database owned by a role with a password (the server trusts anyway); the URL carries
    the password percent-encoded, since it contains an "@"."""
    number = next(_roles)
    role, database, password = f"secretuser{number}", f"secret_db_{number}", f"s3cr3t@pg-{number}x"
    engine = sa.create_engine(postgres_server.admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f"CREATE DATABASE {database} OWNER {role}"))
    engine.dispose()
    userinfo = f"{role}:{quote(password, safe='')}"
    url = f"postgresql://{userinfo}@127.0.0.1:{postgres_server.port}/{database}"
    unreachable = f"postgresql://{userinfo}@127.0.0.1:1/{database}"
    return url, password, unreachable


def test_no_password_in_any_output_log_or_error(secret_database, tmp_path):
    database_url, pg_password, unreachable_url = secret_database
    redis_password = "r3dis-Pa55word"
    redis_url = f"redis://:{redis_password}@127.0.0.1:{servers.free_port()}/0"  # nobody listens
    secrets = [pg_password, quote(pg_password, safe=""), redis_password]

    release = tmp_path / "release"
    (release / "migrations").mkdir(parents=True)
    (release / "migrations" / "202001010000_leaky.py").write_text(LEAKY)
    (release / "migrations" / "202001010001_fails_on_redis.py").write_text(FAILS_ON_REDIS)
    env_file = tmp_path / ".env"
    env_file.write_text(f"DATABASE_URL={database_url}\nexport REDIS_URL='{redis_url}'\n")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}

    def run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "deploytools.datamig", *args],
            cwd=release,
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    answers = {
        "apply --json": run("apply", "--json", "--env-file", str(env_file)),
        "status": run("status", "--env-file", str(env_file)),
        "status --json": run("status", "--json", "--env-file", str(env_file)),
        "apply (people)": run(
            "apply", extra_env={"DATABASE_URL": database_url, "REDIS_URL": redis_url}
        ),
        "unreachable database": run("status", "--database-url", unreachable_url),
    }
    engine = ledger.create_engine(ledger.ledger_database(database_url, None))
    lock = AdvisoryLock(engine, "test")
    lock.acquire(0)
    try:
        answers["lock held"] = run("apply", "--lock-timeout", "0.2", "--env-file", str(env_file))
    finally:
        lock.release()
    with engine.connect() as conn:
        recorded = (
            conn.execute(sa.text("SELECT error FROM data_migration_attempts")).scalars().all()
        )
    engine.dispose()

    # Each run did what it should, so the URLs really went through the output...
    assert answers["apply --json"].returncode == 1
    assert json.loads(answers["apply --json"].stdout)["failed"]["error"].startswith(
        "RuntimeError: Redis at redis://:***@127.0.0.1:"
    )
    assert "connecting to postgresql://" in answers["apply --json"].stderr
    assert "raw password: ***" in answers["apply --json"].stderr
    assert answers["status"].returncode == 0 and "failed" in answers["status"].stdout
    assert json.loads(answers["status --json"].stdout)["pending"] == 1
    assert answers["apply (people)"].returncode == 1
    assert answers["unreachable database"].returncode == 1
    assert "127.0.0.1:1/" in answers["unreachable database"].stderr
    assert answers["lock held"].returncode == 3
    assert any(error and "redis://:***@" in error for error in recorded)
    # ... and no password, raw or percent-encoded, appears anywhere.
    for name, answer in answers.items():
        for secret in secrets:
            assert secret not in answer.stdout, f"{name}: password on stdout"
            assert secret not in answer.stderr, f"{name}: password on stderr"
    for error in recorded:
        for secret in secrets:
            assert secret not in (error or ""), "password stored in the ledger"

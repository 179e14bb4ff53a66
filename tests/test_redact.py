"""Passwords never appear in output: the redaction rules, then the runner end to end."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from urllib.parse import quote

import pytest
import servers  # tests/ is on sys.path (conftest.py)
import sqlalchemy as sa

from deploytools.datamig import ledger
from deploytools.datamig.lock import AdvisoryLock
from deploytools.redact import MASK, display_url, redact, url_passwords

try:
    from hypothesis import example, given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis comes with the "test" extra; a bare pytest skips these tests
    given = None


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
        # one slash or none after the scheme: no URL SQLAlchemy accepts, a password all the same
        (
            "postgresql+psycopg:/app:hunter2@db/app failed",
            "postgresql+psycopg:/app:***@db/app failed",
        ),
        ("postgresql+psycopg:app:hunter2@db/app", "postgresql+psycopg:app:***@db/app"),
        ("redis:/:hunter2@cache/0", "redis:/:***@cache/0"),
        ("url=postgres:///u:pw@h/db", "url=postgres:///u:***@h/db"),
        # keys that end in password or token, and libpq's quoted values
        ("PGPASSWORD=hunter2 psql", "PGPASSWORD=*** psql"),
        ("?access_token=abc&page=2", "?access_token=***&page=2"),
        ("host=db password='hunter 2' user=app", "host=db password='***' user=app"),
        (r"password='it\'s' user=app", "password='***' user=app"),
        ("password='unclosed\nnext line", "password='***\nnext line"),
        # nothing to hide
        ("postgres://app@db/app", "postgres://app@db/app"),
        ("see https://example.com/a@b", "see https://example.com/a@b"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("registry:5000/app:v1@sha256:ab12", "registry:5000/app:v1@sha256:ab12"),
        ("deploy@web1:2222 at 12:30:01", "deploy@web1:2222 at 12:30:01"),
        ("no url", "no url"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


TRAILER = "\n(Background on this error at: https://sqlalche.me/e/20/gkpj)"


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ("('sk_live_4eC39HqLyjWDarjtT1zdp7dc', 3)", "[parameters: ***]" + TRAILER),
        ("{'token': 'x', 'id': 3}", "[parameters: ***]" + TRAILER),
        # executemany: a list of tuples, strings holding brackets and quotes
        ("[('a]b', 1), (\"it's )\", 2)]", "[parameters: ***]" + TRAILER),
        # a value whose repr spans several lines
        ("(Secret(\n    value='s3'\n), 3)", "[parameters: ***]" + TRAILER),
        # a stray quote or an unbalanced bracket: masked up to the trailer, never past it
        ("(Weird(it's), 'sk_1')", "[parameters: ***" + TRAILER),
        ("(Open[(, 'sk_1')", "[parameters: ***" + TRAILER),
        ("(x)), 'sk_1')", "[parameters: ***" + TRAILER),
    ],
)
def test_redact_bound_parameters(parameters, expected):
    statement = "(psycopg.errors.UniqueViolation) duplicate key\n[SQL: INSERT INTO t VALUES (%s)]\n"
    assert redact(f"{statement}[parameters: {parameters}]{TRAILER}") == statement + expected


def test_redact_bound_parameters_without_trailer_or_closing():
    assert redact("[parameters: ('sk', 1)] and more") == "[parameters: ***] and more"
    assert redact("[parameters: ('sk', 1)\nTraceback ...") == "[parameters: ***"
    assert redact("a [parameters: (1,)] b [parameters: (2,)]") == (
        "a [parameters: ***] b [parameters: ***]"
    )


def test_redact_bound_parameters_in_json():
    """The client masks the JSON it prints: the error is JSON-encoded there, and stays valid."""
    error = (
        "IntegrityError: (sqlite3.IntegrityError) UNIQUE constraint failed\n"
        "[SQL: INSERT INTO t (token) VALUES (?)]\n"
        "[parameters: (\"it's-a-secret\", 'sk_live_2')]" + TRAILER
    )
    masked = json.loads(redact(json.dumps({"error": error, "next": "kept"}, indent=2)))
    assert masked["next"] == "kept"
    assert "sk_live_2" not in masked["error"] and "a-secret" not in masked["error"]
    assert masked["error"].endswith("[parameters: ***" + TRAILER)


def test_redact_sqlalchemy_errors_from_the_database(pg_url):
    """The texts SQLAlchemy really produces for a failed statement and a failed executemany."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE keys (token text UNIQUE, note text)"))
        errors = []
        for parameters in (
            {"token": "sk_live_one", "note": "first"},
            [{"token": f"sk_live_{n}", "note": "multi\nline [x]"} for n in range(30)]
            + [{"token": "sk_live_one", "note": "again"}],
        ):
            with pytest.raises(sa.exc.IntegrityError) as raised, engine.begin() as conn:
                conn.execute(
                    sa.text("INSERT INTO keys VALUES (:token, :note)"),
                    [{"token": "sk_live_one", "note": "first"}],
                )
                conn.execute(sa.text("INSERT INTO keys VALUES (:token, :note)"), parameters)
            errors.append(str(raised.value))
    finally:
        engine.dispose()
    for error in errors:
        assert "sk_live_" in error  # SQLAlchemy does show them...
        masked = redact(error)
        assert "sk_live_" not in masked  # ... and redact does not
        assert "[parameters: ***]\n(Background on this error at: " in masked
        assert masked.startswith("(psycopg.errors.UniqueViolation) duplicate key value")
        assert "DETAIL:  Key (token)=(***) already exists.\n" in masked


def test_redact_long_lines():
    """Texts that made the regex backtrack: whole lines with no match, then one URL at the end."""
    for filler in ("a://b:", "x" * 7, "a:b-a:", "password"):
        line = filler * (2_000_000 // len(filler))
        assert redact(line) == line
        assert redact(f"{line} postgres://u:pw@db/app") == f"{line} postgres://u:***@db/app"
    many = "postgres://u:pw@db/app\n" * 100_000
    assert redact(many, ["unused"]) == "postgres://u:***@db/app\n" * 100_000


def test_redact_known_secrets_anywhere():
    secrets = url_passwords("postgresql://u:s3cr%40t@h/db", None, "redis://:other@h/0")
    assert set(secrets) == {"s3cr%40t", "s3cr@t", "other"}
    text = "the password is s3cr@t (s3cr%40t encoded), redis: other"
    assert redact(text, secrets) == "the password is *** (*** encoded), redis: ***"
    # a URL urlsplit cannot read (one slash): its password is found all the same
    assert set(url_passwords("postgresql+psycopg:/app:pw%2Fx@db/app")) == {"pw%2Fx", "pw/x"}


def test_redact_secrets_with_stars():
    """A secret that could be formed again around a mask is still not in the result."""
    assert redact("key a1 b", ["a1*"]) == "key *** b"  # its stars dropped: "a1" is masked
    assert redact("pw=Xa1", ["X", "*a1"]) == "pw=******"
    assert redact("x-y", ["x***y", "x", "y"]) == "***-***"
    assert redact("a *** b", ["***", "*", ""]) == "a *** b"  # indistinguishable from the mask


def test_display_url():
    assert display_url("postgresql://u:p%40ss@db:5432/app") == "postgresql://u:***@db:5432/app"
    assert display_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert display_url("sqlite:////srv/app/shared/datamig.sqlite3") == (
        "sqlite:////srv/app/shared/datamig.sqlite3"
    )
    assert ledger.LedgerDatabase("postgresql+psycopg://u:pw@h/d").display == (
        "postgresql+psycopg://u:***@h/d"
    )


# --------------------------------------------------------------------------- properties

# Pieces of the texts redaction has to look at, so random texts hit its patterns often.
# fmt: off
FRAGMENTS = [
    "postgres://", "redis:/", "h+s:", "u", "1", ":", "/", "@", " ", "\n", "'", '"', "<", "\\",
    "=", "&", ";", "password=", "Token=", "[parameters: ", "(", ")", "[", "]", "{", "}", "*",
    MASK, ")=(", "Failing row contains (", "\n(Background on this error at: x)", "\\n",
]
# fmt: on

# What the URL rule means, as one (backtracking) regex: fine for short texts only.
URL_PASSWORD = re.compile(
    r"(?P<prefix>[A-Za-z][A-Za-z0-9+.\-]*:/*[^\s:/@'\"<>]*):(?P<password>[^\s'\"<>]*)@"
)

if given is not None:
    texts = st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), st.text("ab1:/@ '\"*=()[]\\\n", max_size=4)),
        max_size=30,
    ).map("".join)
    # Secrets with at least one character other than "*" (one made only of stars cannot be told
    # from the mask).
    secret_lists = st.lists(
        st.text("ab1:/@ '\"*=()[]\\\n", min_size=1, max_size=6).filter(lambda s: s.strip("*")),
        max_size=4,
    )
    quick = settings(max_examples=1000, deadline=None, database=None)

    @quick
    @given(text=texts, secrets=secret_lists, data=st.data())
    # a DETAIL whose start is then masked as a token's value, its own ")=(" kept after it
    @example(text='Token=Failing row contains (b&(;}{")=(', secrets=[], data=None)
    def test_redact_property_no_secret_left_and_idempotent(text, secrets, data):
        # Some secrets taken from the text itself, so that they do occur.
        if data is not None and len(text) > 1:
            start = data.draw(st.integers(0, len(text) - 1))
            piece = text[start : start + data.draw(st.integers(1, 8))]
            if piece.strip("*"):
                secrets = [*secrets, piece]
        masked = redact(text, secrets)
        for secret in secrets:
            assert secret not in masked
        assert redact(masked, secrets) == masked

    @quick
    @given(text=st.text("ab1+.:/@ '\"<>\n", max_size=40))
    def test_redact_property_urls_as_the_regex_says(text):
        """Masking URL passwords does what the plain regex says, without its backtracking."""
        assert redact(text) == URL_PASSWORD.sub(lambda m: f"{m['prefix']}:{MASK}@", text)

else:

    def test_redact_properties_need_hypothesis():
        pytest.skip("hypothesis is not installed (pip install hypothesis)")


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

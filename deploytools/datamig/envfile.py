"""Read ``KEY=VALUE`` files such as ``<root>/shared/.env`` into the environment.

Production secrets (DATABASE_URL, REDIS_URL) live in the host's ``shared/.env``, not in the
release. Variables already set win over the file, so an operator can override one value for a
single run. A missing file is not an error: a host may keep everything in its real environment.

:func:`secret_values` picks the values that must never be shown (keys that look secret, and
passwords inside ``*_URL`` values), for the runner's masking of everything it prints or stores.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from deploytools.exceptions import UsageError
from deploytools.redact import url_passwords

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOUBLE_QUOTED_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def _unquote(value: str, where: str) -> str:
    value = value.strip()
    if value[:1] in {'"', "'"}:
        quote = value[0]
        end = _closing_quote(value, quote)
        if end < 0:
            raise UsageError(f"{where}: unterminated {quote} quote")
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise UsageError(f"{where}: unexpected text after the closing quote")
        inner = value[1:end]
        if quote == '"':
            inner = re.sub(r"\\(.)", lambda m: _DOUBLE_QUOTED_ESCAPES.get(m[1], "\\" + m[1]), inner)
        return inner
    # Unquoted: a " #" starts a comment, as in shells and docker-compose.
    comment = re.search(r"\s#", value)
    return (value[: comment.start()] if comment else value).strip()


def _closing_quote(value: str, quote: str) -> int:
    index = 1
    while index < len(value):
        if value[index] == "\\" and quote == '"':
            index += 2
            continue
        if value[index] == quote:
            return index
        index += 1
    return -1


def parse_env_file(text: str, source: str = "<env file>") -> dict[str, str]:
    """The variables of an env file's text: blank lines and ``#`` comments skipped, an optional
    ``export`` prefix, values optionally in single or double quotes. Malformed lines are a
    UsageError naming ``source`` and the line number."""
    variables: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        where = f"{source}:{number}"
        if not sep or not _KEY.fullmatch(key):
            # The line is not echoed: it may hold a secret.
            raise UsageError(f"{where}: expected KEY=VALUE; fix or remove this line")
        variables[key] = _unquote(value, where)
    return variables


def read_env_file(path: Path) -> dict[str, str]:
    """Every variable of the file (``{}`` when it does not exist); UsageError if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the env file {path}: {error}") from None
    return parse_env_file(text, str(path))


def load_env_file(path: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the file's variables in ``environ`` (default ``os.environ``) unless already set there.

    Returns the variables that were set. A missing file sets nothing.
    """
    environ = os.environ if environ is None else environ
    loaded = {}
    for key, value in read_env_file(path).items():
        if key not in environ:
            environ[key] = value
            loaded[key] = value
    return loaded


_SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY", re.IGNORECASE)
#: Shorter values are not masked as literals: masking "on" or "1" would mask everything.
MIN_SECRET_LENGTH = 4
_NOT_SECRETS = frozenset({"true", "false", "none", "null", "yes"})


def url_password(value: str) -> list[str]:
    """The password of a URL, also of one SQLAlchemy cannot parse (``scheme:/user:pw@host``):
    the text between the first ``:`` of the user part and the last ``@``."""
    found = url_passwords(value)
    if found or "@" not in value:
        return found
    scheme, sep, rest = value.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return []
    userinfo = rest.lstrip("/").rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [password] if password else []


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """The values to mask wherever they appear: those of keys that look secret (``*PASSWORD*``,
    ``*SECRET*``, ``*TOKEN*``, ``*KEY*``, any case) and the passwords inside ``*_URL`` values.
    Values shorter than :data:`MIN_SECRET_LENGTH` characters (and booleans) are left out."""
    secrets: set[str] = set()
    for key, value in environ.items():
        if not value:
            continue
        if key.upper().endswith("_URL") or key.upper() == "URL":
            secrets.update(url_password(value))
        if _SECRET_KEY.search(key):
            secrets.add(value)
    return sorted(
        s for s in secrets if len(s) >= MIN_SECRET_LENGTH and s.lower() not in _NOT_SECRETS
    )

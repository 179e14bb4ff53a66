"""Read ``KEY=VALUE`` files such as ``<root>/shared/.env`` into the environment.

Production secrets (DATABASE_URL, REDIS_URL) live in the host's ``shared/.env``, not in the
release. Variables already set win over the file, so an operator can override one value for a
single run. A missing file is not an error: a host may keep everything in its real environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

from deploytools.exceptions import UsageError

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


def load_env_file(path: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the file's variables in ``environ`` (default ``os.environ``) unless already set there.

    Returns the variables that were set. A missing file sets nothing.
    """
    environ = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the env file {path}: {error}") from None
    loaded = {}
    for key, value in parse_env_file(text, str(path)).items():
        if key not in environ:
            environ[key] = value
            loaded[key] = value
    return loaded

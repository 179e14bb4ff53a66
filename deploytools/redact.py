"""Keep passwords out of everything deploytools prints, logs or stores.

Connection URLs (``DATABASE_URL``, ``REDIS_URL``) carry passwords, and they leak through
exception texts (SQLAlchemy, redis-py, a migration's own ``raise``), log lines and tracebacks.
Every message the runner shows goes through :func:`redact` first. Masking errs on the side of
hiding too much: the password part runs to the *last* ``@`` of the URL, so a password holding an
unencoded ``@`` or ``/`` is still masked whole.

Stdlib only: the deploy side imports this on the developer's machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# scheme://user:password@ — the user part stops at ":" "/" "@"; the password part is greedy up to
# the last "@" before whitespace or a quote, which over-masks rather than leaks.
_URL_PASSWORD = re.compile(
    r"(?P<prefix>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"<>]*):(?P<password>[^\s'\"<>]*)@"
)

# password=... in a query string or a libpq keyword/value conninfo.
_PASSWORD_PARAM = re.compile(r"(?P<key>\b(?:password|passwd|pwd)=)(?P<value>[^\s&;'\"]+)", re.I)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with the password of every ``scheme://user:password@host`` URL masked.

    ``secrets`` are extra literal strings (e.g. the passwords of the configured URLs, also in
    their percent-decoded form) replaced wherever they appear, URL or not.
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['prefix']}:{MASK}@", text)
    text = _PASSWORD_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)
    # Longest first so a secret that contains another one is masked whole.
    for secret in sorted({s for s in secrets if s and s != MASK}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def url_passwords(*urls: str | None) -> list[str]:
    """The passwords in ``urls``, raw and percent-decoded, for :func:`redact`'s ``secrets``."""
    found: list[str] = []
    for url in urls:
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password is None:
            match = _URL_PASSWORD.search(url)
            password = match["password"] if match else None
        if password:
            found.extend({password, unquote(password)})
    return found


def display_url(url: str) -> str:
    """``url`` fit for messages: the password replaced by ``***``, everything else kept."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return redact(url)
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostinfo}"))
    except ValueError:
        return redact(url)

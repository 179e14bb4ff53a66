"""Keep passwords out of everything deploytools prints, logs or stores.

Connection URLs (``DATABASE_URL``, ``REDIS_URL``) carry passwords, and they leak through
exception texts (SQLAlchemy, redis-py, a migration's own ``raise``), log lines and tracebacks;
SQLAlchemy's errors also show the statement's bound parameters. Every message the runner shows
goes through :func:`redact` first. Masking errs on the side of hiding too much: the password part
runs to the *last* ``@`` of the URL, so a password holding an unencoded ``@`` or ``/`` is still
masked whole, and a malformed parameter list is masked to the end of the error.

Masking costs linear time, whatever the text: each search through the whole text starts at a
literal (``:``, ``=``, ``[parameters: ``) the regex engine jumps to, no pattern can backtrack
over what it has read, and no part of the text is scanned more than a fixed number of times.
:func:`redact` is idempotent, and its result holds none of the literal ``secrets`` it was given
(except a secret made only of ``*``, which cannot be told from the mask).

Stdlib only: the deploy side imports this on the developer's machine.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# --------------------------------------------------------------------------- URL passwords
# scheme:[/...]user:password@ — the user part stops at ":" "/" "@"; the password part is greedy up
# to the last "@" of the word (a run of characters other than whitespace, quotes and <>), which
# over-masks rather than leaks. Any number of slashes after the scheme, none included:
# ``postgresql+psycopg:/app:secret@db/app`` is no URL SQLAlchemy accepts, but it holds a password.
#
# Finding these with one regex backtracks (each start position rescans the rest of the word), so
# they are found in three linear steps: a ":" with an "@" after it in the same word (the engine
# jumps from ":" to ":"), the bounds of that word, then the first scheme/user prefix in the word.
_WORD_CHARS = r"""[^\s'"<>]"""
_COLON_BEFORE_AT = re.compile(r""":[^\s'"<>@:]*+@""")
_WORD_REST = re.compile(_WORD_CHARS + "*+")
_LAST_NON_WORD = re.compile(r"""(?s:.*)[\s'"<>]""")
# Scheme from the start of a run of scheme characters (so a run is scanned once), a letter
# somewhere in it, then ":", slashes, the user and the ":" before the password.
_SCHEME_USER = re.compile(
    r"""(?<![A-Za-z0-9+.\-])[0-9+.\-]*+[A-Za-z][A-Za-z0-9+.\-]*+:/*+[^\s:/@'"<>]*+:"""
)

# --------------------------------------------------------------------------- password=...
# password=... in a query string or a libpq keyword/value conninfo (``password='a b'`` quoted
# too), and keys that end so (PGPASSWORD=, access_token=). The match starts at "=" and looks
# back for the key, so the engine only stops at "=" signs.
_PASSWORD_PARAM = re.compile(
    r"""=(?<=[dDnNtT]=)(?i:(?<=password=)|(?<=passwd=)|(?<=pwd=)|(?<=secret=)|(?<=token=))"""
    r"""(?P<value>'(?:[^'\\\n]|\\.)*+(?P<closed1>')?|"(?:[^"\\\n]|\\.)*+(?P<closed2>")?"""
    r"""|(?:[^\s&;'"\\]|\\.)++)"""
)

# --------------------------------------------------------------------------- bound parameters
# SQLAlchemy's errors end with "[parameters: <repr>]" and, for most, "\n(Background on this error
# at: …)"; the repr is a tuple, a dict or a list of them, and may span several lines when a
# value's repr does. The list ends at the "]" that balances the opening one, outside string
# literals. A parameter list that does not close (a stray quote, a bracket in a custom repr, the
# text cut short) is masked up to SQLAlchemy's trailer, or to the end of the text.
_PARAMETERS = "[parameters: "
_TRAILER = "(Background on this error at: "
_PARAMETERS_TOKEN = re.compile(
    r"""\\[\s\S]"""  # an escape outside a string literal (the text is JSON-encoded): skip it
    r"""|'(?:[^'\\\n]|\\.)*+'|"(?:[^"\\\n]|\\.)*+\""""  # a string literal: skip it
    r"""|['"]"""  # a quote that does not close on its line
    r"""|[\[\](){}]"""
)
# PostgreSQL repeats the offending values in its error DETAIL: "Key (token)=(sk_live_…) already
# exists.", "Failing row contains (3, sk_live_…)." They are masked up to the last ")" of the line
# (the whole rest of the line if there is none); one match runs to the end of its line, so no
# text is scanned twice.
_ROW_VALUES = re.compile(r"(?:\)=\(|Failing row contains \()(?P<values>[^\n]*+)")
# A SQLAlchemy parameter list has at most a few hundred of those tokens; past this many the text
# is not one, and it is masked whole rather than parsed further.
_MAX_PARAMETER_TOKENS = 10_000


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with passwords masked by ``***``: the password of every
    ``scheme://user:password@host`` URL (also ``scheme:/user:…@``, ``scheme:user:…@``), the value
    of ``password=`` and ``token=`` keys, SQLAlchemy's ``[parameters: …]`` lists whole, and the
    row values PostgreSQL repeats in an error's DETAIL (``Key (token)=(***) already exists.``).

    ``secrets`` are extra literal strings (e.g. the passwords of the configured URLs, also in
    their percent-decoded form) replaced wherever they appear, URL or not.
    """
    text = _mask_literals(text, _literal_pieces(tuple(secrets)))
    text = _mask_bound_parameters(text)
    text = _ROW_VALUES.sub(_mask_row_values, text)
    text = _PASSWORD_PARAM.sub(_mask_param_value, text)
    return _mask_url_passwords(text)


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
            span = next(_url_password_spans(url), None)
            password = url[span[0] : span[1]] if span else None
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


# --------------------------------------------------------------------------- literal secrets


@functools.lru_cache(maxsize=64)
def _literal_pieces(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """The strings to replace for ``secrets``, longest first.

    A secret that starts or ends with ``*``, or holds ``***``, could be formed again around a
    mask (``a*`` in ``a`` + ``***``); masking its parts without those stars hides every
    occurrence of the secret, and leaves nothing a second pass would change.
    """
    pieces = {
        piece.strip("*")
        for secret in secrets
        if secret
        for piece in re.split(r"\*{3,}", secret)
        if piece.strip("*")
    }
    return tuple(sorted(pieces, key=len, reverse=True))


def _mask_literals(text: str, pieces: tuple[str, ...]) -> str:
    # One fast substring search per secret, and a replace for the few that occur: quicker than
    # one regex alternation of all of them (bench/bench_redact.py), which tries every secret at
    # every position. Longest first, so a secret that contains another one is masked whole.
    for piece in pieces:
        if piece in text:
            text = text.replace(piece, MASK)
    return text


# --------------------------------------------------------------------------- bound parameters


def _mask_bound_parameters(text: str) -> str:
    if _PARAMETERS not in text:
        return text
    out: list[str] = []
    done = 0
    trailer = -1  # where the next trailer starts; found once and reused while still ahead
    while (anchor := text.find(_PARAMETERS, done)) >= 0:
        start = anchor + len(_PARAMETERS)
        if trailer < start:
            trailer = _trailer_start(text, start)
        close = _closing_bracket(text, start, trailer)
        out += [text[done:start], MASK]
        if close is None:
            done = trailer
        else:
            out.append("]")
            done = close + 1
    out.append(text[done:])
    return "".join(out)


def _trailer_start(text: str, start: int) -> int:
    """Where SQLAlchemy's "(Background on this error at: …)" line begins after ``start``, its
    line break (raw or JSON-escaped ``\\n``) included; the end of ``text`` if there is none."""
    found = text.find(_TRAILER, start)
    if found < 0:
        return len(text)
    while found > start:
        if text[found - 1] in "\r\n \t":
            found -= 1
        elif found - 2 >= start and text[found - 2 : found] in ("\\n", "\\r"):
            found -= 2
        else:
            break
    return found


def _closing_bracket(text: str, start: int, end: int) -> int | None:
    """The index of the "]" that closes the list opened just before ``start``, or None."""
    depth = 1
    for count, token in enumerate(_PARAMETERS_TOKEN.finditer(text, start, end)):
        kind = token[0][0]
        if count >= _MAX_PARAMETER_TOKENS or (kind in "'\"" and len(token[0]) == 1):
            return None
        if kind in "([{":
            depth += 1
        elif kind in ")]}":
            depth -= 1
            if depth == 0:
                return token.start() if kind == "]" else None
    return None


def _mask_row_values(match: re.Match[str]) -> str:
    values = match["values"]
    last = values.rfind(")")
    tail = values[last:] if last >= 0 else ""
    if _ROW_VALUES.search(tail):
        # Kept, it would be masked by a second pass once its own start is masked (password=…).
        tail = ""
    return match[0][: match.start("values") - match.start()] + MASK + tail


# --------------------------------------------------------------------------- password=...


def _mask_param_value(match: re.Match[str]) -> str:
    value = match["value"]
    if value[0] not in "'\"":
        return f"={MASK}"
    # Quotes kept as they were (an unclosed one stays unclosed), so a second pass changes nothing.
    closing = match["closed1"] or match["closed2"] or ""
    return f"={value[0]}{MASK}{closing}"


# --------------------------------------------------------------------------- URL passwords


def _url_password_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each URL password in ``text``, left to right, at most one per word."""
    searched = 0  # every word before this has been looked at
    while hit := _COLON_BEFORE_AT.search(text, searched):
        non_word = _LAST_NON_WORD.match(text, searched, hit.start())
        word_start = non_word.end() if non_word else searched
        word_end = _WORD_REST.match(text, hit.end()).end()
        last_at = text.rindex("@", hit.end() - 1, word_end)
        prefix = _SCHEME_USER.search(text, word_start, last_at)
        if prefix:
            yield prefix.end(), last_at
        searched = word_end


def _mask_url_passwords(text: str) -> str:
    out: list[str] = []
    done = 0
    for start, end in _url_password_spans(text):
        out += [text[done:start], MASK]
        done = end
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)

"""Passwords never leave the process: the one place that turns a database URL or DSN into showable text.

Every stage that records or prints where a database is (an Optuna ``--storage``, a ``--dsn``) passes
it through :func:`redact` first; error text that may quote a URL goes through :func:`scrub`.
A password can hide in three places: the URL's userinfo (``user:pw@``), its query
(``?password=pw``), or a libpq ``key=value`` string (``password=pw``). ``PGPASSWORD`` is read by
libpq alone; its value is only ever used to scrub text, never written into it.
"""

from __future__ import annotations

import os
import re
import urllib.parse

HIDDEN = "***"
_PASSWORD_KEY = "password"
# One libpq key=value pair: the value is a bare word or a single-quoted string with \-escapes.
_KEY_VALUE = re.compile(r"(?P<key>\w+)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|\S*)")


def redact(dsn: str) -> str:
    """``dsn`` (a URL or a ``key=value`` string) with every password replaced by ``***``; the rest as given."""
    if "://" in dsn:
        return _redact_url(dsn)
    return _KEY_VALUE.sub(_hide_pair, dsn)


def has_hidden_password(text: str) -> bool:
    """Whether ``text`` came from :func:`redact` and lost a password on the way."""
    return HIDDEN in text


def scrub(text: str, dsn: str | None = None) -> str:
    """``text`` without the passwords of ``dsn`` and of ``$PGPASSWORD`` (for messages that may quote them)."""
    secrets = set(passwords(dsn)) if dsn else set()
    if os.environ.get("PGPASSWORD"):
        secrets.add(os.environ["PGPASSWORD"])
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
        quoted = urllib.parse.quote(secret, safe="")
        if quoted != secret:
            text = text.replace(quoted, HIDDEN)
    return text


def passwords(dsn: str) -> list[str]:
    """The passwords written in ``dsn`` (decoded), in every form :func:`redact` hides."""
    if "://" in dsn:
        _user, password, rest = _userinfo(dsn)
        found = [urllib.parse.unquote(password)] if password is not None else []
        query = rest.partition("?")[2].partition("#")[0]
        found += [value for key, value in urllib.parse.parse_qsl(query) if key.lower() == _PASSWORD_KEY]
    else:
        found = [_unquote(m["value"]) for m in _KEY_VALUE.finditer(dsn) if m["key"].lower() == _PASSWORD_KEY]
    return [secret for secret in found if secret and secret != HIDDEN]


def _unquote(value: str) -> str:
    """A libpq value as libpq reads it: single quotes removed, backslash escapes resolved."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _userinfo(url: str) -> tuple[str | None, str | None, str]:
    """The user and password of ``url`` (None where absent) and what follows the userinfo.

    The userinfo ends at the last ``@`` before the query (a user name may hold ``@``, as in Azure's
    ``user@server``, and a password ``/``); a URL whose query starts inside the password (an unencoded
    ``?``) ends it at its last ``@``. User and password part at the first ``:``. Wherever that ``@``
    really is, everything before it is hidden, so a password can only be over-hidden, never shown.
    """
    rest = url.split("://", 1)[1]
    query = rest.find("?")
    end = rest.rfind("@", 0, query) if query >= 0 else -1
    if end < 0:
        end = rest.rfind("@")
    if end < 0:
        return None, None, rest
    user, colon, password = rest[:end].partition(":")
    return user, password if colon else None, rest[end + 1 :]


def _redact_url(url: str) -> str:
    user, password, rest = _userinfo(url)
    head = "" if user is None else f"{user}:{HIDDEN}@" if password is not None else f"{user}@"
    path, question, query = rest.partition("?")
    if question:
        query, hash_mark, fragment = query.partition("#")
        query = "&".join(_hide_query_pair(pair) for pair in query.split("&")) + hash_mark + fragment
    return f"{url.split('://', 1)[0]}://{head}{path}{question}{query}"


def _hide_query_pair(pair: str) -> str:
    key, equals, _value = pair.partition("=")
    if equals and urllib.parse.unquote_plus(key).lower() == _PASSWORD_KEY:
        return f"{key}={HIDDEN}"
    return pair


def _hide_pair(match: re.Match[str]) -> str:
    if match["key"].lower() == _PASSWORD_KEY:
        return f"{match['key']}={HIDDEN}"
    return match[0]

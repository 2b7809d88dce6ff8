"""Credentials out of what tavaal records and prints: ``redact(text)`` masks the secrets of every URI in a text.

A URI's user info (``s3://KEY:SECRET@bucket/x`` -> ``s3://***@bucket/x``, ``https://token@host`` ->
``https://***@host``) and the values of query parameters named like secrets (tokens, passwords, keys,
signatures such as ``X-Amz-Signature`` or ``sig``) become ``***``; everything else is kept as written, so a text
without credentials comes back unchanged. Used on MLflow params, tags, run names and config artifacts, and on
every message that names a tracking URI. No Ray or MLflow here: plain ``re`` and ``urllib.parse``.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

MASK = "***"

# a URI inside any text: a scheme, "://", then everything up to whitespace or a quote
_URI = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>`]+""")
# query parameter names whose values are secrets (matched against the lower-cased, decoded name)
_SECRET_NAME = re.compile(
    r"secret|token|passw|pwd|signature|credential|api[_\-]?key|access[_\-]?key|private[_\-]?key|auth|session"
    r"|^(sig|key|password|pass|code)$"
)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter (or config key) of this name carries a secret value."""
    return bool(_SECRET_NAME.search(urllib.parse.unquote_plus(name).strip().lower()))


def redact_uri(uri: str) -> str:
    """One URI with its user info and secret query values masked (see the module's docstring)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    # the authority ends at the first "/", "?" or "#"; an unencoded "/" inside a password (AWS secret keys have
    # them) ends it early, so a "user:pass" authority without a numeric port reaches to the last "@" instead
    authority, tail = _split_authority(rest)
    if "@" not in authority and ":" in authority and not authority.startswith("["):
        at = rest.rfind("@", 0, _first(rest, "?#"))
        if not authority.rpartition(":")[2].isdigit() and at >= 0:
            host, tail = _split_authority(rest[at + 1 :])
            authority = f"{rest[:at]}@{host}"
    if "@" in authority:
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    path, qsep, query = tail.partition("?")
    if qsep:
        query, hsep, fragment = query.partition("#")
        query = "&".join(_redact_param(p) for p in query.split("&")) + hsep + fragment
    return f"{scheme}://{authority}{path}{qsep}{query}"


def _first(text: str, chars: str) -> int:
    """The index of the first of ``chars`` in ``text`` (its length if none is)."""
    return min((i for i in (text.find(c) for c in chars) if i >= 0), default=len(text))


def _split_authority(rest: str) -> tuple[str, str]:
    end = _first(rest, "/?#")
    return rest[:end], rest[end:]


def _redact_param(param: str) -> str:
    name, eq, value = param.partition("=")
    return f"{name}={MASK}" if eq and value and is_secret_name(name) else param


def redact(text: Any) -> str:
    """``str(text)`` with the credentials of every URI in it masked."""
    return _URI.sub(lambda m: redact_uri(m.group(0)), str(text))


def redact_values(obj: Any) -> Any:
    """A copy of a config-like structure (dicts, lists, tuples) with every string value passed through ``redact``;
    keys and non-string values are kept."""
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_values(v) for v in obj)
    if isinstance(obj, str):
        return redact(obj)
    return obj


def has_credentials(uri: str) -> bool:
    """Whether redacting ``uri`` changes it (user info or a secret query value)."""
    return redact(uri) != uri

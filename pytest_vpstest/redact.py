"""Credentials never printed: URLs shown in logs, errors and state lose their password and secret
query values (``https://user:***@host/hook?token=***``)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_text", "redact_url"]

MASK = "***"
# Query parameters whose values are credentials (matched case-insensitively, anywhere in the name).
_SECRET_KEYS = re.compile(r"token|secret|pass|pwd|key|auth|sig|credential|session", re.IGNORECASE)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()]+")


def redact_url(url: str) -> str:
    """``url`` with the password of its user part and the values of secret query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted (for error messages that quote a URL)."""
    return _URL.sub(lambda mo: redact_url(mo.group(0)), text)

"""Blocking JSON-over-HTTP calls to the registry (run in an executor by the node).

Proxies from the environment are ignored on purpose: the registry is always on the lab or
fleet network, never behind the operator's HTTP proxy.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["RegistryError", "call", "deregister", "peers", "register"]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RegistryError(Exception):
    """The registry could not be reached or refused the request."""


def call(method: str, url: str, body: object = None, timeout: float = 3.0) -> Any:
    if not url.startswith(("http://", "https://")):
        raise RegistryError(f"registry URL must be http(s): {url}")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked above
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200]
        raise RegistryError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f"{method} {url}: {reason}") from None


def register(base: str, record: dict[str, Any]) -> None:
    call("POST", base.rstrip("/") + "/api/peers", record)


def deregister(base: str, name: str, timeout: float = 1.0) -> None:
    call("DELETE", base.rstrip("/") + "/api/peers/" + name, timeout=timeout)


def peers(base: str) -> list[dict[str, Any]]:
    answer = call("GET", base.rstrip("/") + "/api/peers")
    found = answer.get("peers") if isinstance(answer, dict) else None
    if not isinstance(found, list):
        raise RegistryError(f"GET {base}/api/peers: answer has no 'peers' list")
    return [p for p in found if isinstance(p, dict) and isinstance(p.get("name"), str)]

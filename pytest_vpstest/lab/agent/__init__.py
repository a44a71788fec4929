"""The reference P2P node: a small, real UDP peer used as the default system under test.

Stdlib only and self-contained (relative imports only), so the package can be zipped into a
single-file artifact (``build.py``) that needs nothing but the target's Python. Commands:
``run`` (the node), ``probe`` (the probe contract), ``registry`` (HTTP peer registry) and
``bootstrap`` (UDP address discovery, rendezvous and relay). See ``docs/agent.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

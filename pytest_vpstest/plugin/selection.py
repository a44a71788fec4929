"""Exact node selection (``--vps-only-nodes a,b``): run only the suite tests of the named nodes.

``pytest -k n1`` matches substrings of test ids, so it also selects ``n10``'s and ``n11``'s pairs.
Here a suite test is kept when a node its parameters name (a pair's dialer or listener, a gossip
publisher) is one of the selected nodes; suite tests of the whole fleet, which name no node (CRDT
convergence), are left out. Tests outside the suites are not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pytest_vpstest.errors import ConfigError

__all__ = ["ONLY_NODES_OPTION", "item_nodes", "parse_node_selection", "split_by_nodes"]

ONLY_NODES_OPTION = "--vps-only-nodes"
_Item = TypeVar("_Item")


def parse_node_selection(text: str, known: Sequence[str], inventory: Path | None = None) -> frozenset[str]:
    """The node names of ``text`` (comma-separated), each of which must be in ``known``.

    Raises a one-line :class:`ConfigError` naming every unknown name (and the inventory).
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{ONLY_NODES_OPTION}: no node named (expected e.g. {ONLY_NODES_OPTION} n1,n2)")
    unknown = [n for n in dict.fromkeys(names) if n not in known]
    if unknown:
        where = f" {inventory}" if inventory is not None else ""
        raise ConfigError(
            f"{ONLY_NODES_OPTION}: unknown node(s) {', '.join(unknown)}: not in the inventory{where} "
            f"(its nodes: {', '.join(known)})"
        )
    return frozenset(names)


def item_nodes(params: dict[str, Any]) -> frozenset[str]:
    """The nodes a test's parameters name: a pair's ``src`` and ``dst``, a publisher's name."""
    nodes: set[str] = set()
    for value in params.values():
        src, dst = getattr(value, "src", None), getattr(value, "dst", None)
        if isinstance(src, str) and isinstance(dst, str):
            nodes.update((src, dst))
    publisher = params.get("publisher")
    if isinstance(publisher, str):
        nodes.add(publisher)
    return frozenset(nodes)


def split_by_nodes(
    items: Iterable[_Item], wanted: Collection[str], is_suite_test: Callable[[_Item], bool]
) -> tuple[list[_Item], list[_Item]]:
    """(kept, deselected): suite tests (``is_suite_test(item)``) that name no wanted node are
    deselected; every other test is kept."""
    keep: list[_Item] = []
    drop: list[_Item] = []
    for item in items:
        if not is_suite_test(item):
            keep.append(item)
            continue
        callspec = getattr(item, "callspec", None)
        named = item_nodes(dict(callspec.params)) if callspec is not None else frozenset()
        (keep if named & set(wanted) else drop).append(item)
    return keep, drop

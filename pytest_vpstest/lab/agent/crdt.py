"""A grow-only counter CRDT: per-node counts, merge = element-wise max, value = sum."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from .wire import valid_name

__all__ = ["GCounter"]


@dataclass
class GCounter:
    counts: dict[str, int] = field(default_factory=dict)

    def increment(self, node: str, amount: int) -> None:
        if amount < 0:
            raise ValueError("a grow-only counter cannot decrease")
        if amount == 0:
            return
        self.counts[node] = self.counts.get(node, 0) + amount

    def merge(self, other: Mapping[str, object]) -> bool:
        """Fold in another replica's counts (bad entries ignored); True when this replica changed."""
        changed = False
        for node, count in other.items():
            if not valid_name(node) or not isinstance(count, int) or isinstance(count, bool) or count < 0:
                continue
            if count > self.counts.get(node, 0):
                self.counts[node] = count
                changed = True
        return changed

    @property
    def value(self) -> int:
        return sum(self.counts.values())

    def digest(self) -> str:
        """Equal on every replica holding the same state: replicas have converged when digests match."""
        # Zero entries carry no information and need not have been replicated.
        canonical = json.dumps(sorted((n, c) for n, c in self.counts.items() if c), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

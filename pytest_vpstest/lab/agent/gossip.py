"""Gossip de-duplication: the first sighting of each message id, its latency and duplicate count."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["GossipLog", "Receipt"]


@dataclass
class Receipt:
    topic: str
    origin: str
    received_at: float
    latency_ms: float
    hops: int
    duplicates: int = 0


class GossipLog:
    """Message ids seen by this node, oldest forgotten beyond ``capacity``."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, Receipt] = OrderedDict()

    def observe(
        self, message_id: str, topic: str, origin: str, sent_at: float, now: float, hops: int
    ) -> bool:
        """Record a sighting; True only the first time (the caller then forwards the message)."""
        receipt = self._seen.get(message_id)
        if receipt is not None:
            receipt.duplicates += 1
            return False
        latency_ms = max(0.0, (now - sent_at) * 1000.0)
        self._seen[message_id] = Receipt(topic, origin, now, round(latency_ms, 3), hops)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def get(self, message_id: str) -> Receipt | None:
        return self._seen.get(message_id)

    def __len__(self) -> int:
        return len(self._seen)

"""The bootstrap's registration table under any sequence of hellos, relays, punch requests and
expiry (Hypothesis rule-based): names and observed addresses stay a one-to-one map, a relay is
delivered only from the address a registered node last spoke from and only to the target's current
fresh address, and a punch offer always carries both sides' current addresses."""

from __future__ import annotations

import json

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pytest_vpstest.lab.agent import wire
from pytest_vpstest.lab.agent.bootstrap import BootstrapState

NAMES = st.sampled_from(["a", "b", "c"])
ADDRS = st.sampled_from(
    [("198.18.0.4", 9000), ("198.18.0.4", 9001), ("198.18.0.7", 9000), ("198.18.0.10", 4000)]
)
TTL = 10.0


class BootstrapMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = BootstrapState(ttl=TTL)
        self.now = 0.0
        # The model: where each name last said hello from, and when.
        self.model: dict[str, tuple[wire.Addr, float]] = {}

    def _fresh(self, name: str) -> wire.Addr | None:
        entry = self.model.get(name)
        return entry[0] if entry and self.now - entry[1] <= TTL else None

    def _claim(self, name: str, addr: wire.Addr) -> None:
        for other, (where, _) in list(self.model.items()):
            if where == addr and other != name:
                del self.model[other]
        self.model[name] = (addr, self.now)

    @rule(seconds=st.floats(0, 8))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def expire(self) -> None:
        self.state.expire(self.now)
        self.model = {n: e for n, e in self.model.items() if self.now - e[1] <= TTL}

    @rule(name=NAMES, addr=ADDRS)
    def hello(self, name: str, addr: wire.Addr) -> None:
        [(data, dest)] = self.state.handle(
            wire.encode({"t": "hello", "node": name, "id": "x"}), addr, self.now
        )
        assert dest == addr and json.loads(data)["mapped"] == wire.format_addr(addr)
        self._claim(name, addr)

    @rule(to=NAMES, src=ADDRS)
    def relay(self, to: str, src: wire.Addr) -> None:
        [(data, dest)] = self.state.handle(wire.relay(to, b"payload"), src, self.now)
        sender = next((n for n, (where, _) in self.model.items() if where == src and self._fresh(n)), None)
        if sender is not None:
            self.model[sender] = (src, self.now)  # any relay request proves the sender alive
        target = self._fresh(to)
        if sender is not None and target is not None:
            assert (wire.parse_forward(data), dest) == ((sender, b"payload"), target)
        else:
            assert json.loads(data)["t"] == "relay_error" and dest == src

    @rule(name=NAMES, peer=NAMES, src=ADDRS)
    def punch(self, name: str, peer: str, src: wire.Addr) -> None:
        request = wire.encode({"t": "punch_req", "node": name, "peer": peer, "session": "s", "id": "r"})
        out = self.state.handle(request, src, self.now)
        self._claim(name, src)
        target = self._fresh(peer)
        if target is None:
            [(data, dest)] = out
            assert json.loads(data)["t"] == "error" and dest == src
            return
        (to_requester, dest1), (to_peer, dest2) = out
        assert dest1 == src and json.loads(to_requester)["addr"] == wire.format_addr(target)
        assert dest2 == target and json.loads(to_peer)["addr"] == wire.format_addr(src)

    @invariant()
    def names_and_addresses_are_one_to_one(self) -> None:
        assert all(self.state.by_addr[e.addr] == n for n, e in self.state.by_name.items())
        assert all(self.state.by_name[n].addr == a for a, n in self.state.by_addr.items())

    @invariant()
    def lookups_match_the_model(self) -> None:
        for name in ("a", "b", "c"):
            assert self.state.lookup(name, self.now) == self._fresh(name)


TestBootstrapMachine = BootstrapMachine.TestCase

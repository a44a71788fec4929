"""The NAT classifier and its reflectors over real UDP on loopback (no NAT in between): the
reflectors report the client's own endpoint, answer from the other port and via the alternate
server, so the classifier reports endpoint-independent mapping and filtering; with the alternate
silent, it reports the filtering it can no longer see."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from pytest_vpstest.lab import natcheck


def _free_udp_pair(host: str) -> tuple[int, int]:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            p = s.getsockname()[1]
        if p < 65535:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as t:
                    t.bind((host, p + 1))
                return p, p + 1
            except OSError:
                continue
    raise RuntimeError("no free port pair")


_threads: list[threading.Thread] = []
_stop = threading.Event()


def _start(bind: str, alt: str | None, ports: tuple[int, int]) -> None:
    ready = threading.Event()
    t = threading.Thread(target=natcheck.serve, args=(bind, alt, ports, 10.0, _stop, ready), daemon=True)
    t.start()
    _threads.append(t)
    assert ready.wait(timeout=10), f"reflector on {bind} did not start"


@pytest.fixture
def ports(capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[int, int]]:
    _stop.clear()
    yield _free_udp_pair("127.0.0.1")
    _stop.set()
    while _threads:
        _threads.pop().join(timeout=5)


def test_no_nat_classifies_as_endpoint_independent(ports: tuple[int, int]) -> None:
    _start("127.0.0.1", "127.0.0.2", ports)
    _start("127.0.0.2", "127.0.0.1", ports)
    result = natcheck.classify("127.0.0.1", "127.0.0.2", ports, bind="127.0.0.3")
    assert (result.mapping, result.filtering) == ("endpoint-independent", "endpoint-independent")
    local = result.local
    assert local.startswith("127.0.0.3:")
    assert set(result.mapped.values()) == {local}
    assert set(result.mapped) == {f"127.0.0.1:{ports[0]}", f"127.0.0.2:{ports[0]}", f"127.0.0.2:{ports[1]}"}
    assert result.from_other_address and result.from_other_port


def test_missing_alternate_answers_look_like_stricter_filtering(ports: tuple[int, int]) -> None:
    # A reflector pair whose "other address" answer never comes: address-dependent filtering seen.
    _start("127.0.0.4", None, ports)
    _start("127.0.0.5", None, ports)
    result = natcheck.classify("127.0.0.4", "127.0.0.5", ports, bind="127.0.0.6")
    assert result.mapping == "endpoint-independent"
    assert (result.from_other_address, result.from_other_port) == (False, True)
    assert result.filtering == "address-dependent"


def test_no_reflector_is_an_error(ports: tuple[int, int]) -> None:
    with pytest.raises(RuntimeError, match=r"no answer from reflector 127\.0\.0\.7"):
        natcheck.classify("127.0.0.7", "127.0.0.8", ports, bind="127.0.0.9")


def test_tcp_no_nat_classifies_as_endpoint_independent(ports: tuple[int, int]) -> None:
    _start("127.0.1.1", "127.0.1.2", ports)
    _start("127.0.1.2", "127.0.1.1", ports)
    result = natcheck.classify("127.0.1.1", "127.0.1.2", ports, bind="127.0.1.3", protocol="tcp")
    assert result.local.startswith("127.0.1.3:")
    # One local port for all three connections, seen unchanged by every reflector.
    assert set(result.mapped.values()) == {result.local}
    assert result.from_other_address and result.from_other_port
    assert (result.mapping, result.filtering) == ("endpoint-independent", "endpoint-independent")


def test_tcp_answers_that_never_connect_look_like_stricter_filtering(ports: tuple[int, int]) -> None:
    # No alternate: the other-address answer never comes, the other-port one does.
    _start("127.0.1.4", None, ports)
    _start("127.0.1.5", None, ports)
    result = natcheck.classify("127.0.1.4", "127.0.1.5", ports, bind="127.0.1.6", protocol="tcp")
    assert (result.from_other_address, result.from_other_port) == (False, True)
    assert result.filtering == "address-dependent"


def test_tcp_no_reflector_is_an_error(ports: tuple[int, int]) -> None:
    with pytest.raises(RuntimeError, match=r"no answer from reflector 127\.0\.1\.7:\d+ over tcp"):
        natcheck.classify("127.0.1.7", "127.0.1.8", ports, bind="127.0.1.9", protocol="tcp")

"""Datagram formats shared by the node and the bootstrap service.

Every datagram's first byte says what it is:

``{``  a JSON control message (an object with a ``"t"`` type key)
``D``  bulk data: ``D`` + session (u32) + sequence (u64) + payload
``A``  bulk data acknowledgement: ``A`` + session (u32) + highest sequence seen (u64)
``R``  relay request to a bootstrap: ``R`` + len(to) (u8) + to + inner datagram
``F``  relayed datagram from a bootstrap: ``F`` + len(from) (u8) + from + inner datagram

The inner datagram of ``R``/``F`` is itself a JSON or ``D`` datagram, so anything a node can
send directly it can also send through a relay.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

__all__ = [
    "DATA_HEADER",
    "KIND_ACK",
    "KIND_DATA",
    "KIND_FORWARD",
    "KIND_JSON",
    "KIND_RELAY",
    "MAX_UNFRAGMENTED",
    "NAME_RE",
    "Addr",
    "Message",
    "data_ack",
    "data_header",
    "decode",
    "encode",
    "format_addr",
    "forward",
    "parse_ack",
    "parse_addr",
    "parse_data",
    "parse_forward",
    "parse_relay",
    "relay",
    "relay_overhead",
    "valid_name",
]

Addr = tuple[str, int]
Message = dict[str, Any]

KIND_JSON = 0x7B  # "{"
KIND_DATA = 0x44  # "D"
KIND_ACK = 0x41  # "A"
KIND_RELAY = 0x52  # "R"
KIND_FORWARD = 0x46  # "F"

DATA_HEADER = struct.Struct("!cIQ")
# Largest UDP payload that crosses a 1500-byte MTU without IP fragmentation.
MAX_UNFRAGMENTED = 1472

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def valid_name(name: object) -> bool:
    """A node name: a safe identifier of at most 64 characters."""
    return isinstance(name, str) and NAME_RE.match(name) is not None and ".." not in name


def encode(message: Message) -> bytes:
    """One JSON control datagram."""
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> Message | None:
    """The JSON object in a control datagram, or None when it is not one."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("t"), str):
        return None
    return value


def _wrap(kind: bytes, name: str, inner: bytes) -> bytes:
    raw = name.encode()
    if len(raw) > 255:
        raise ValueError(f"node name too long for a relay header: {name!r}")
    return kind + bytes([len(raw)]) + raw + inner


def _unwrap(data: bytes) -> tuple[str, bytes] | None:
    if len(data) < 3:
        return None
    size = data[1]
    if len(data) < 2 + size:
        return None
    try:
        name = data[2 : 2 + size].decode()
    except UnicodeDecodeError:
        return None
    return name, data[2 + size :]


def relay(to: str, inner: bytes) -> bytes:
    """A request asking a bootstrap to forward ``inner`` to node ``to``."""
    return _wrap(b"R", to, inner)


def parse_relay(data: bytes) -> tuple[str, bytes] | None:
    """(to, inner) of a relay request, or None when malformed."""
    return _unwrap(data) if data[:1] == b"R" else None


def forward(sender: str, inner: bytes) -> bytes:
    """A relayed datagram as the bootstrap delivers it, naming its sender."""
    return _wrap(b"F", sender, inner)


def parse_forward(data: bytes) -> tuple[str, bytes] | None:
    """(sender, inner) of a relayed datagram, or None when malformed."""
    return _unwrap(data) if data[:1] == b"F" else None


def relay_overhead(name: str) -> int:
    """Bytes a relay header adds for a node called ``name``."""
    return 2 + len(name.encode())


def data_header(session: int, seq: int) -> bytes:
    return DATA_HEADER.pack(b"D", session, seq)


def data_ack(session: int, highest_seq: int) -> bytes:
    return DATA_HEADER.pack(b"A", session, highest_seq)


def parse_ack(data: bytes) -> tuple[int, int] | None:
    """(session, highest sequence seen) of a bulk data acknowledgement."""
    if len(data) != DATA_HEADER.size or data[:1] != b"A":
        return None
    _, session, seq = DATA_HEADER.unpack(data)
    return session, seq


def parse_data(data: bytes) -> tuple[int, int, int] | None:
    """(session, seq, payload length) of a bulk data datagram."""
    if len(data) < DATA_HEADER.size or data[:1] != b"D":
        return None
    _, session, seq = DATA_HEADER.unpack_from(data)
    return session, seq, len(data) - DATA_HEADER.size


def format_addr(addr: Addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_addr(text: str, default_port: int | None = None) -> Addr:
    """``host:port`` (or ``[v6]:port``; port optional when a default is given) as a tuple."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"bad address {text!r}: port must be 0-65535")
        return host, int(port_text)
    if default_port is None:
        raise ValueError(f"bad address {text!r}: expected host:port")
    return host, default_port

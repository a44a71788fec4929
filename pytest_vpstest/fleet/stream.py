"""A command running on its own SSH channel with stdin open: lines in, output lines out.

What ``remote.NodeSession.open_stream`` returns, and what a probe batch (``fleet.batch``) talks to.
"""

from __future__ import annotations

import contextlib

import paramiko

__all__ = ["ChannelStream"]


class ChannelStream:
    """A command running on one SSH channel: ``send`` lines to its stdin, read its output lines."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self._out = channel.makefile("rb")

    def send(self, text: str) -> None:
        self._channel.sendall(text.encode())

    def close_input(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.shutdown_write()

    def readline(self) -> str:
        """The next output line ('' at the end of the output)."""
        raw: bytes = self._out.readline()
        return raw.decode(errors="replace")

    def exit_code(self) -> int | None:
        """The command's exit status once it ended, else None."""
        if not self._channel.exit_status_ready():
            return None
        return int(self._channel.recv_exit_status())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._out.close()
            self._channel.close()

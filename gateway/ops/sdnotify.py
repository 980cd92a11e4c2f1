"""sd_notify without systemd: one datagram to $NOTIFY_SOCKET (READY=1, WATCHDOG=1, STOPPING=1).

The protocol is a single AF_UNIX datagram per state change (sd_notify(3)); an abstract socket
name starts with '@'. Without NOTIFY_SOCKET every call is a no-op, so the daemon runs the same
under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> bool:
        if self._sock is None or not self._address:
            return False
        addr = self._address
        target = "\0" + addr[1:] if addr.startswith("@") else addr
        try:
            self._sock.sendto(state.encode(), target)
            return True
        except OSError:
            return False

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC in seconds (when to ping), or None without a watchdog."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

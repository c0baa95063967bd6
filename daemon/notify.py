"""sd_notify, spoken directly on ``$NOTIFY_SOCKET`` (no libsystemd needed).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # "@name" is a Linux abstract socket
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> None:
        """``send(READY="1", STATUS="...")`` sends ``READY=1\\nSTATUS=...``."""
        if self._sock is None or self._address is None:
            return
        message = "\n".join(f"{k}={v.replace(chr(10), ' ')}" for k, v in fields.items())
        with contextlib.suppress(OSError):  # the manager went away: nothing to tell
            self._sock.sendto(message.encode(), self._address)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2_000_000)
    except ValueError:
        return None

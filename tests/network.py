"""The network as tests see it: names from a table, connections watched, fake services.

No test sends a DNS query or a packet beyond loopback. ``HostTable`` answers
``socket.getaddrinfo`` from a table the test fills (the ``hosts`` fixture installs
it), ``ConnectionLog`` records every TCP connection attempt and refuses any that
is not to loopback, and ``fake_service`` is a loopback TCP service that is not a
mail server (it sends a banner, or nothing at all).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

# What OpenSSH sends first (RFC 4253 section 4.2: the identification string).
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"

_real_getaddrinfo = socket.getaddrinfo
_AddrInfo = tuple[Any, Any, int, str, tuple[Any, ...]]


class HostTable:
    """Resolves numeric addresses as the system does and names from ``self.names`` only."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {"localhost": ["127.0.0.1"]}
        self.asked: list[str] = []

    def add(self, name: str, *addresses: str) -> None:
        self.names[name.lower().rstrip(".")] = list(addresses)

    def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[_AddrInfo]:
        if host is None or isinstance(host, bytes):
            raise socket.gaierror(socket.EAI_NONAME, "tests resolve text names only")
        self.asked.append(host)
        try:
            # Numeric forms (also "2130706433" or "0x7f.1") need no lookup.
            return _real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        addresses = self.names.get(host.lower().rstrip("."))
        if addresses is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        found: list[_AddrInfo] = []
        for address in addresses:
            for info in _real_getaddrinfo(
                address, port, family, type, proto, socket.AI_NUMERICHOST
            ):
                found.append(info)
        return found


class ConnectionLog:
    """Every TCP connect attempt in the process; any to a non-loopback address is refused."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.outside: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex

        def guarded(real: Callable[..., Any]) -> Callable[..., Any]:
            def connect(sock: socket.socket, address: Any) -> Any:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    host = str(address[0])
                    self.attempts.append(host)
                    if not ipaddress.ip_address(host.partition("%")[0]).is_loopback:
                        self.outside.append(host)
                        raise ConnectionRefusedError(f"tests never connect to {host}")
                return real(sock, address)

            return connect

        monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
        monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))


@contextmanager
def fake_service(banner: bytes | None) -> Iterator[int]:
    """A TCP service on 127.0.0.1 that sends ``banner`` (or nothing) on each connection,
    then keeps it open without a word; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)
            if banner:
                with suppress(OSError):
                    conn.sendall(banner)

    thread = threading.Thread(target=serve, name="fake-service", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in accepted:
            conn.close()


def closed_port() -> int:
    """A loopback port nothing listens on (the kernel just handed it out and took it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

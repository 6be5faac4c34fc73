"""A loopback TCP forwarder that can cut and refuse connections, or hold answers: an outage on demand."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from crypto_live.embedded import free_port

#: Makes, for each accepted connection, the function that sees every chunk its client sends.
Observer = Callable[[], Callable[[bytes], None]]


class TcpGate:
    """A loopback TCP forwarder to ``target_port`` that can refuse connections for a while (an outage).

    ``observe``, when given, is called once per accepted connection; the function it returns
    sees every chunk the client sends, in order, before it is forwarded unchanged.

    ``delay`` (seconds, 0 by default) makes a slow endpoint: every chunk of an answer
    (upstream to client) that arrives while it is set is held that long before it is
    forwarded. Requests still reach the target at once, so it acts on them.
    """

    def __init__(self, target_port: int, *, observe: Observer | None = None):
        self.port = free_port()
        self._target = target_port
        self._observe = observe
        self.delay = 0.0
        self._listening = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        server.settimeout(0.05)
        self._listening.set()
        self._acceptor = threading.Thread(target=self._accept, args=(server,), daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        """Stop listening (new connections are refused) and cut every open connection."""
        self._listening.clear()
        if self._acceptor is not None:
            self._acceptor.join()
        with self._lock:
            for conn in self._connections:
                _shutdown(conn)  # wakes the pumps, which close the sockets themselves

    def _accept(self, server: socket.socket) -> None:
        with server:
            while self._listening.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(("127.0.0.1", self._target))
                with self._lock:
                    self._connections += [client, upstream]
                pumps_left = [2]
                requests = self._observe() if self._observe is not None else None
                for source, target, seen, answers in (
                    (client, upstream, requests, False),
                    (upstream, client, None, True),
                ):
                    threading.Thread(
                        target=self._pump, args=(source, target, pumps_left, seen, answers), daemon=True
                    ).start()

    def _pump(
        self,
        source: socket.socket,
        target: socket.socket,
        pumps_left: list[int],
        seen: Callable[[bytes], None] | None,
        answers: bool,
    ) -> None:
        try:
            while data := source.recv(65536):
                if seen is not None:
                    seen(data)
                if answers and (held := self.delay) > 0:
                    time.sleep(held)  # a slow endpoint: nothing to wait for but the clock
                target.sendall(data)
        except OSError:
            pass
        _shutdown(source)
        _shutdown(target)
        with self._lock:
            pumps_left[0] -= 1
            if pumps_left[0] == 0:  # closed only when neither pump can touch them any more
                for conn in (source, target):
                    self._connections.remove(conn)
                    conn.close()


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)

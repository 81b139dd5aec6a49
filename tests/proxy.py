"""A loopback TCP proxy that tests can take down, stall and bring back, to simulate database outages."""

from __future__ import annotations

import select
import socket
import threading
import time


class Proxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``down()`` drops every connection and refuses new ones.

    ``stall()`` makes it a black hole: connections stay open (nothing is refused or reset) but
    nothing is forwarded any more, like a server or network path that hangs; ``resume()`` ends it.
    With ``target=None`` it is a black hole from the start: it accepts connections and never answers.
    """

    def __init__(self, target: tuple[str, int] | None) -> None:
        self.target = target
        self._stalled = threading.Event()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (Linux)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.target is None:  # a black hole: hold the connection open, answer nothing
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                if a.fileno() < 0 or b.fileno() < 0:  # down() closed them
                    return
                if self._stalled.is_set():  # leave everything unread: the other side waits for ever
                    time.sleep(0.02)
                    continue
                readable, _, _ = select.select([a, b], [], [], 0.1)
                if not readable or self._stalled.is_set():
                    continue
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass

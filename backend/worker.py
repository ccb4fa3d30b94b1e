"""gunicorn's threaded worker with a bound on slow and stalled clients (``docker/gunicorn.conf.py`` uses it).

gthread hands a connection to a thread once its first bytes arrive, and that
thread then reads the request with a blocking socket that has no timeout: a
client that sends its headers a byte at a time, or stops half-way, holds the
thread for as long as it likes, and THREADS such clients block every route.
Here every blocking read or write on a client connection gives up after
CLIENT_TIMEOUT seconds (the socket's timeout; for a write, the whole answer),
so such a client costs a thread for that long at most, and then its
connection is closed. The number of connections a worker holds is bounded by
gunicorn's ``worker_connections``.
"""

from __future__ import annotations

import socket

from gunicorn.workers.gthread import ThreadWorker


class _BoundedSocket(socket.socket):
    """A client connection whose blocking mode carries a timeout."""

    __slots__ = ()
    timeout_s = 30.0

    def setblocking(self, flag: bool) -> None:
        """gthread switches a connection to blocking before it reads a request: blocking, but bounded."""
        if flag:
            self.settimeout(self.timeout_s)
        else:
            super().setblocking(False)


class BoundedThreadWorker(ThreadWorker):
    """``gthread`` whose client connections time out (``_BoundedSocket``); set ``client_timeout`` before forking."""

    client_timeout = 30.0

    def init_process(self) -> None:
        _BoundedSocket.timeout_s = self.client_timeout
        super().init_process()

    def enqueue_req(self, conn) -> None:
        """Every connection passes here before a thread reads from it (new, kept alive or deferred)."""
        if type(conn.sock) is socket.socket:
            conn.sock.__class__ = _BoundedSocket
        super().enqueue_req(conn)

"""An AMP client for the relays' control sockets, shared by the relay and
bridge interop tests."""

from __future__ import annotations

import socket
import struct


class AmpClient:
    """Just enough AMP to drive the relay's control socket synchronously."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buffer = b""
        self.asks = 0

    def call(self, command: str, **fields: bytes) -> dict[str, bytes]:
        self.asks += 1
        box = {"_command": command.encode(), "_ask": str(self.asks).encode(), **fields}
        data = b"".join(
            struct.pack("!H", len(k)) + k.encode() + struct.pack("!H", len(v)) + v
            for k, v in box.items()
        )
        self.sock.sendall(data + b"\x00\x00")
        answer: dict[str, bytes] = {}
        while True:
            key = self._take(struct.unpack("!H", self._take(2))[0])
            if not key:
                return answer
            answer[key.decode()] = self._take(struct.unpack("!H", self._take(2))[0])

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("relay closed the control connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def close(self) -> None:
        self.sock.close()

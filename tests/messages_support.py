"""Message delivery in memory (L{DeliveryCase}: Messaging over the
memory store and a registry on a Clock), shared by the message and push tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crs.attach.registry import Attachment, AttachRegistry
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import message
from tests.fakes import MemoryMessageStore

NOW = 1_800_000_000.0


class Conn:
    """An attached client's connection: records what the CRS sends it."""

    def __init__(self, uri: str, conn_id: str = "c1") -> None:
        self.uri, self.account, self.conn_id = uri, "acme", conn_id
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def disconnect(self, reason: str) -> None:
        pass

    def of(self, kind: str) -> list[Any]:
        return [m for m in self.sent if m.type == kind]


class DeliveryCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryMessageStore(lambda: NOW)
        self.store.known.add("tel:+2")  # attached at some time before
        trace = TraceHub(self.clock.seconds)
        self.registry = AttachRegistry("crs1", self.clock.seconds, trace)
        self.messaging = Messaging(
            self.store,  # type: ignore[arg-type]
            self.registry,
            trace,
            scheduler=self.clock,
        )
        self.registry.on_attach.append(self.messaging.attached)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def attach(self, uri: str, conn_id: str = "c1") -> Conn:
        conn = Conn(uri, conn_id)
        self.registry.attach(Attachment(uri, "acme", NOW, "1", "192.0.2.1", 1, conn))
        return conn

    def confirm(self, conn: Conn, upto: int | None = None) -> int:
        """Confirm every message sent (again as more arrive); how many were confirmed."""
        done = 0
        while upto is None or done < upto:
            messages = conn.of("message")
            if done >= len(messages):
                break
            self.messaging.delivered(conn, message("delivered", message=messages[done]["message"]))  # type: ignore[arg-type]
            done += 1
        return done

    def post(self, conn: Conn, msg_id: int, to: str, content: bytes, **more: Any) -> None:
        self.messaging.post(conn, message("post", id=msg_id, to=to, content=content, **more))  # type: ignore[arg-type]

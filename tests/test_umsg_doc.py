"""docs/umsg.md is the specification: the codec, the CRS and the client
must handle every message type it lists, with the fields it lists."""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from cryptify.client.session import HANDLERS, ClientSession
from cryptify.crs.attach.core import ATTACHED, CHALLENGED, NEW, AttachSession
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.calls.wiring import RegistryParties
from cryptify.crs.calls.wiring import install as install_calls
from cryptify.crs.messages.wiring import Messaging
from cryptify.crs.messages.wiring import install as install_messaging
from cryptify.crs.trace import TraceHub
from cryptify.protocols.umsg import ERROR_CODES, FROM_CLIENT, FROM_SERVER, Message
from tests.fakes import FakeRelay, MemoryMessageStore
from tests.umsg_support import FROM_CLIENT_SAMPLES, FROM_SERVER_SAMPLES, World

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "umsg.md")


def doc_types() -> dict[str, dict[str, dict[str, bool]]]:
    """{direction: {type: {field: required}}} from the doc's section 9 tables."""
    with open(DOC) as f:
        text = f.read()
    reference = text[text.index("## 9. Message reference") :]
    reference = reference[: reference.index("## 10.")]
    result: dict[str, dict[str, dict[str, bool]]] = {}
    direction = ""
    current: dict[str, bool] | None = None
    for line in reference.splitlines():
        if line.startswith("### 9.1"):
            direction = "client"
        elif line.startswith("### 9.2"):
            direction = "server"
        elif match := re.match(r"#### `([a-z-]+)`", line):
            current = result.setdefault(direction, {}).setdefault(match.group(1), {})
        elif current is not None and (match := re.match(r"\| `([a-z-]+)` \|", line)):
            cells = [c.strip() for c in line.strip("|").split("|")]
            current[match.group(1)] = cells[-1].startswith("yes")
    return result


def doc_codes() -> set[str]:
    return set(doc_code_rows())


def doc_code_rows() -> dict[str, set[str]]:
    """{code: the message types of its "sent in" cell} from section 7's table."""
    with open(DOC) as f:
        text = f.read()
    section = text[text.index("## 7. Codes") : text.index("## 8.")]
    rows = {}
    for line in section.splitlines():
        if match := re.match(r"^\| `([a-z-]+)` \|", line):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[match.group(1)] = set(re.findall(r"[a-z]+", cells[-2]))
    return rows


CRS = os.path.join(os.path.dirname(DOC), os.pardir, "cryptify", "crs")

#: How the CRS's code sends a code, and in which message type.
_SENDS = (
    (re.compile(r'message\(\s*"(error|refused|disconnect)",[^()]*?code="([a-z-]+)"', re.S), None),
    (re.compile(r'\.refuse\(\s*"([a-z-]+)"'), "refused"),
    (re.compile(r'\._error\(\s*[^,()]+,\s*[^,()]+,\s*"([a-z-]+)"'), "error"),
    (re.compile(r'MessageRefused\(\s*"([a-z-]+)"'), "error"),
)


def code_sends() -> set[tuple[str, str]]:
    """(message type, code) for every literal code the CRS sends."""
    found = set()
    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(CRS)
        for name in names
        if name.endswith(".py")
    )
    for path in paths:
        with open(path) as f:
            source = f.read()
        for pattern, kind in _SENDS:
            for match in pattern.finditer(source):
                if kind is None:
                    found.add((match.group(1), match.group(2)))
                else:
                    found.add((kind, match.group(1)))
    return found


class _Peer:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.ended: list[str] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def end(self, code: str) -> None:
        self.ended.append(code)

    def promoted(self) -> None:
        pass


class DocTests(SynchronousTestCase):
    """The doc, the codec, the CRS and the client agree."""

    def test_types_and_fields(self) -> None:
        """Every type and field in the doc is in the codec's schema, and the other way round."""
        documented = doc_types()
        for direction, schema in (("client", FROM_CLIENT), ("server", FROM_SERVER)):
            self.assertEqual(set(documented[direction]), set(schema), direction)
            for name, fields in schema.items():
                want = {f.name: f.required for f in fields}
                self.assertEqual(documented[direction][name], want, f"{direction} {name}")

    def test_codes(self) -> None:
        """Every error code the codec knows is explained in the doc."""
        self.assertEqual(doc_codes(), set(ERROR_CODES))

    def test_codes_sent_where_documented(self) -> None:
        """Every code of the table that the CRS's code sends literally, in refused,
        disconnect or error, has that message type in its "sent in" cell."""
        rows = doc_code_rows()
        sends = code_sends()
        self.assertIn(("error", "unexpected"), sends)
        self.assertIn(("error", "not-found"), sends)
        for kind, code in sorted(sends):
            if code in ERROR_CODES:
                with self.subTest(code=code, kind=kind):
                    self.assertIn(kind, rows[code])

    def test_server_handles_every_client_type(self) -> None:
        """Each client -> CRS type from the doc is handled by a CRS with calls and
        messages installed, in its state: answered, acted on or refused with a
        defined code -- never 'unexpected'."""
        world = World.make()
        install_calls(
            world.core,
            SessionTable(
                RegistryParties(world.registry),
                FakeRelay(),
                world.clock,
                TraceHub(world.clock.seconds),
            ),
        )
        store = MemoryMessageStore(world.clock.seconds)
        install_messaging(
            world.core,
            Messaging(store, world.registry, world.registry.trace, scheduler=world.clock),
        )  # type: ignore[arg-type]
        acted: list[str] = []
        for kind, handler in list(world.core.handlers.items()):
            world.core.handlers[kind] = lambda s, m, h=handler: (acted.append(m.type), h(s, m))[1]
        for name in doc_types()["client"]:
            with self.subTest(name):
                peer = _Peer()
                session = world.core.session(peer, "192.0.2.1", 1, ("ws", 1000))
                session.state = {"attach": NEW, "prove": CHALLENGED}.get(name, ATTACHED)
                session.account, session.uri, session.period = "acme", "tel:+4612345", "2026-11"
                session.nonce = bytes(32)
                session.received(Message(name, FROM_CLIENT_SAMPLES[name]))
                world.clock.advance(0)
                self.assertNotIn("unexpected", peer.ended)
                codes = [m.get("code") for m in peer.sent]
                self.assertNotIn("unexpected", codes)
                self.assertNotIn("malformed", codes)
                self.assertNotIn("not-implemented", codes)
                self.assertTrue(peer.sent or peer.ended or name in acted, name)
        self.assertTrue(all(isinstance(s, str) for s in FROM_CLIENT_SAMPLES))
        self.assertIsInstance(session, AttachSession)

    def test_client_handles_every_server_type(self) -> None:
        """Each CRS -> client type from the doc has a client handler that accepts the sample."""
        documented = doc_types()["server"]
        self.assertEqual(set(HANDLERS), set(documented))
        for name in documented:
            with self.subTest(name):
                sent: list[Any] = []
                session = ClientSession("acme", "tel:+4612345", _no_signer, sent.append)
                session.state = {"challenge": "attaching", "attached": "proving"}.get(
                    name, "attached"
                )
                events = session.received(Message(name, FROM_SERVER_SAMPLES[name]))
                self.assertTrue(events or sent, name)


class _Signer:
    def sign(self, message: bytes) -> bytes:
        return bytes(129)


def _no_signer(period: str) -> _Signer:
    return _Signer()

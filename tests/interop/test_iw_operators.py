"""
Interop: messages and a call between two operators over the inter-working link.

Two real ``twistd crs`` instances, each alone (no pool) in its own network
namespace (the harness of tests/interop/_pool.py): operator A at
10.99.0.1 hosts account ``alpha`` (client Alice), operator B at 10.99.0.2
hosts ``beta`` (client Bob), each with its own accounts directory and its
own KMS; each has the other in ``iw-crs.conf`` under one shared secret.
B's host has a second address (10.99.0.12, the manual's "private VLAN"),
on which B's relay listens too (it listens on every address; B's CRS
tells its clients the first): A's ``crs.conf`` maps B's configured
address to it (``addr-map``), and B's firewall drops A's link and relay
packets sent to B's first address, so A reaches B only through the map.
One set-up, several checks in order:

- ``show iw-crs`` shows the link up with the peer's version, A's
  outgoing connection up (to the second address: B's firewall counts it);
- Alice calls Bob (``to-account beta``) and ``show iw-crs`` shows the
  data link up while it lasts (outgoing at A, incoming at B): the invite, ringing, talk and
  Bob's hangup cross the link; media goes both ways, Alice's leg through
  A's relay and Bob's through B's, the two relays bridged to each other
  (raw relay packets with each leg's tag), A's relay sending B's leg to
  B's second address (counted by B's firewall);
- with the reference client (``cryptify-client``, each side given the
  other domain's ``cryptify-kms export``): Alice's second number sends a
  sealed message to Bob's (``--to-account beta``), which opens it,
  verified with alpha's KPAK; then calls it: MIKEY-SAKKE keyed with beta's
  Z and verified with alpha's KPAK, a tone each way, each side finding the
  other's tone in its recording;
- Alice posts to Bob (``to-account beta``): posted, delivered, Alice told;
  Bob posts to Alice (``to-account alpha``) the other way;
- the link cut (blackhole routes both ways) while Alice posts: each post
  is answered (kept at A), and once the routes are back Bob gets each
  one exactly once;
- ``delete iw-crs`` at A: A's link closes; Alice's post for ``beta`` is
  refused (``not-found``); Bob's posts for ``alpha`` are kept at B;
  ``add iw-crs`` again and they reach Alice, once.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import cbor2
from twisted.trial.unittest import SkipTest

from cryptify.client.audio import peak_frequency, read_wav
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import load_key_material
from tests.interop._pool import (
    CEILING,
    CLIENT_PORT,
    Client,
    PoolCase,
    PoolNet,
    address,
    crs_conf,
    send,
)
from tests.interop._procs import (
    BIN,
    Twistd,
    provision,
    run_cli,
    short_tempdir,
    unix_answers,
    wait_for,
)
from tests.interop._ws import available as websockets_available

SECRET = "OperatorsAgreedThis42"
ALICE, BOB = "tel:+46110000001", "tel:+46220000001"
#: operator index -> (account, client URI)
HOSTED = {1: ("alpha", ALICE), 2: ("beta", BOB)}
#: The numbers the reference client (cryptify-client processes) uses.
ALICE2, BOB2 = "tel:+46110000002", "tel:+46220000002"
SECOND = {1: ALICE2, 2: BOB2}
#: B's second address: A reaches B's link and relay there, by addr-map.
B_MAPPED = address(12)
IW_PORT, RELAY_PORT = 8080, 5146


class Inbox:
    """What one client received: messages (confirmed at once), delivered
    notes, and answers by request id."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.told: set[str] = set()
        self.answers: dict[int, dict[str, Any]] = {}
        #: Other frames (call signalling), in order.
        self.frames: list[dict[str, Any]] = []


class IwOperatorsTests(PoolCase):
    COUNT = 2

    def setUp(self) -> None:
        if not websockets_available():
            raise SkipTest("websockets is not installed")
        self.dir = short_tempdir(self)
        self.net = PoolNet(self, self.dir, self.COUNT)
        self.dirs = []
        self.procs = {}
        for index, peer in ((1, 2), (2, 1)):
            d = os.path.join(self.dir, f"op{index}")
            os.makedirs(d)
            conf = crs_conf(d, self.COUNT, f"{d}/accounts", pool=False)
            with open(conf) as f:
                text = f.read()
            with open(conf, "w") as f:  # clients of the other operator reach it here
                f.write(text.replace("relay 0.0.0.0 ", f"relay {address(index)} "))
                if index == 1:
                    f.write(f"addr-map {address(2)} {B_MAPPED}\n")
            if index == 2:  # B's relay: on both of its host's addresses
                with open(os.path.join(d, "relay.conf"), "w") as f:
                    f.write(text)
            with open(os.path.join(d, "crs-local.conf"), "w") as f:
                local = self.LOCAL.get(index, "")
                if "workers" not in local:
                    local += "workers 1\n"  # one process unless the test asks
                f.write(f"db-backup none\n{local}")
            iw = os.path.join(d, "iw-crs.conf")
            with open(os.open(iw, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(f"iw-crs {address(peer)} {SECRET}\n")
            self.dirs.append(d)
        self.second_address()
        self.addCleanup(self.stop_all)
        for index in (1, 2):
            self.start(index)
        for index in (1, 2):  # each operator relays its own client's leg
            d = self.dirs[index - 1]
            relay = Twistd(
                d,
                "crs-relay",
                "--config",
                os.path.join(d, "relay.conf" if index == 2 else "crs.conf"),
                prefix=tuple(self.net.hosts[index - 1].prefix(d)),
            )
            self.addCleanup(relay.stop)
        for index in (1, 2):
            wait_for(lambda i=index: unix_answers(self.socket(i)), f"op{index}'s socket", CEILING)
        self.period = period_of(time.time())
        self.keys = {}
        self.key_files: dict[str, str] = {}
        #: Each operator's account's public KMS parameters (cryptify-kms export).
        self.domain_files: dict[int, str] = {}
        for index, (account, uri) in HOSTED.items():
            d = self.dirs[index - 1]
            files = provision(d, self.socket(index), account, [uri, SECOND[index]], self.period)
            self.keys[uri] = load_key_material(files[uri]).for_period(self.period)
            self.key_files.update(files)
            path = os.path.join(self.dir, f"{account}.domain")
            kms = ("--store", os.path.join(d, "kms"))
            status, _, err = run_cli(
                "cryptify-kms", *kms, "export", account, "--period", self.period, "-o", path
            )
            self.assertEqual(status, 0, err)
            self.domain_files[index] = path
        self.clients = []
        self.addCleanup(lambda: [c.close() for c in self.clients])
        self.alice, self.bob = Client(ALICE, "alpha"), Client(BOB, "beta")
        self.clients += [self.alice, self.bob]
        self.inbox = {ALICE: Inbox(), BOB: Inbox()}
        self.requests = 0

    def second_address(self) -> None:
        """B's host gets ``B_MAPPED``; its firewall drops what A sends to
        B's first address on the link and relay ports and counts what A
        sends to the second."""
        host = self.net.hosts[1]
        host.run("ip", "addr", "add", f"{B_MAPPED}/24", "dev", "eth0")
        for proto, port in (("tcp", IW_PORT), ("udp", RELAY_PORT)):
            match = ["-s", address(1), "-p", proto, "--dport", str(port)]
            host.run("iptables", "-A", "INPUT", "-d", address(2), *match, "-j", "DROP")
            host.run("iptables", "-A", "INPUT", "-d", B_MAPPED, *match)

    def mapped_packets(self, proto: str) -> int:
        """Packets from A that B's firewall counted to ``B_MAPPED`` (``tcp``:
        the link, ``udp``: the relay)."""
        argv = ["iptables", "-n", "-v", "-x", "-L", "INPUT"]
        out = subprocess.run(
            [*self.net.hosts[1].prefix(), *argv], check=True, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            fields = line.split()
            if B_MAPPED in fields and proto in line and fields[2] != "DROP":
                return int(fields[0])
        raise AssertionError(f"no counter for {proto} to {B_MAPPED}: {out}")

    # -- the clients -----------------------------------------------------

    def read(self, client: Client, timeout: float) -> bool:
        """Handle the next frame for ``client``; False on a timeout."""
        try:
            msg: dict[str, Any] = cbor2.loads(client.ws.recv(timeout=timeout))
        except TimeoutError:
            return False
        box = self.inbox[client.uri]
        kind = msg.get("type")
        if kind == "message":
            box.messages.append((str(msg["message"]), bytes(msg.get("content", b""))))
            send(client.ws, type="delivered", message=msg["message"])
        elif kind == "delivered":
            box.told.add(str(msg["message"]))
        elif kind in ("posted", "error") and "id" in msg:
            box.answers[msg["id"]] = msg
        else:
            box.frames.append(msg)
        return True

    def expect(self, client: Client, kind: str) -> dict[str, Any]:
        """The first frame of ``kind`` for ``client`` (waiting for it)."""
        box = self.inbox[client.uri]

        def found() -> bool:
            return any(f.get("type") == kind for f in box.frames)

        self.until(client, found, f"a {kind}")
        frame = next(f for f in box.frames if f.get("type") == kind)
        box.frames.remove(frame)
        return frame

    def until(self, client: Client, done: Any, what: str) -> None:
        deadline = time.monotonic() + CEILING
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{client.uri}: {what} did not happen")
            self.read(client, 0.5)

    def post(self, client: Client, to: str, account: str, content: bytes) -> int:
        """Send a post (its answer is read later); its request id."""
        self.requests += 1
        send(
            client.ws,
            type="post",
            id=self.requests,
            to=to,
            content=content,
            key=os.urandom(16),
            **{"to-account": account},
        )
        return self.requests

    def answer(self, client: Client, request: int) -> dict[str, Any]:
        box = self.inbox[client.uri]
        self.until(client, lambda: request in box.answers, f"the answer to post {request}")
        return box.answers[request]

    def posted(self, client: Client, to: str, account: str, content: bytes) -> str:
        """Post until answered ``posted`` (the peer's accounts may not have
        arrived yet right after the link came up); the message ID."""
        deadline = time.monotonic() + CEILING
        while True:
            got = self.answer(client, self.post(client, to, account, content))
            if got["type"] == "posted":
                return str(got["message"])
            if time.monotonic() > deadline:
                raise AssertionError(f"not posted: {got}")
            time.sleep(0.5)

    def received_once(self, client: Client, ids: set[str]) -> None:
        box = self.inbox[client.uri]
        self.until(client, lambda: ids <= {i for i, _ in box.messages}, f"receiving {ids}")
        seen = [i for i, _ in box.messages]
        self.assertEqual(len(seen), len(set(seen)), f"{client.uri} got a message twice")
        contents: dict[bytes, set[str]] = {}
        for message_id, content in box.messages:
            contents.setdefault(content, set()).add(message_id)
        self.assertEqual([c for c, i in contents.items() if len(i) > 1], [])

    # -- the operators ---------------------------------------------------

    def link_rows(self, index: int) -> list[list[str]]:
        return [r.split() for r in self.cli(index, "show", "iw-crs").splitlines()[1:] if r.strip()]

    def relay_up(self, index: int) -> bool:
        rows = [line.split() for line in self.cli(index, "show", "services").splitlines()]
        return any(row[1:3] == ["crs_relay", "active"] for row in rows)

    def link_up(self, index: int) -> bool:
        return any(r[1] == "up" for r in self.link_rows(index))

    def relayed_both_ways(self, alice: dict[str, Any], bob: dict[str, Any]) -> None:
        """Raw relay packets (tag + an RTP-sized payload) from both clients'
        hosts, each to its own operator's relay: each side gets the other's
        through both relays."""
        socks = {ALICE: self.net.switch.socket(), BOB: self.net.switch.socket()}
        for sock in socks.values():
            sock.setblocking(False)
        self.addCleanup(lambda: [s.close() for s in socks.values()])
        legs = {ALICE: alice, BOB: bob}
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + CEILING
        while len(got) < 2:
            if time.monotonic() > deadline:
                raise AssertionError(f"media not relayed both ways: {got}")
            for uri, leg in legs.items():
                payload = b"\x80" + b"\x00" * 11 + uri.encode()
                target = (leg["relay-host"], leg["relay-port"])
                socks[uri].sendto(bytes(leg["relay-tag"]) + payload, target)
            time.sleep(0.1)
            for uri, sock in socks.items():
                try:
                    got[uri] = sock.recv(2048)
                except BlockingIOError:
                    pass
        self.assertTrue(got[ALICE].endswith(BOB.encode()), got)
        self.assertTrue(got[BOB].endswith(ALICE.encode()), got)

    def client(self, name: str, index: int, uri: str, *args: str) -> subprocess.Popen[bytes]:
        """``cryptify-client`` as ``uri`` of operator ``index`` in the client
        host, given the other operator's domain parameters."""
        path = os.path.join(self.dir, f"client-{name}.out")
        argv = [
            *self.net.switch.prefix(self.dir),
            os.path.join(BIN, "cryptify-client"),
            *args,
            "--keys",
            self.key_files[uri],
            "--server",
            f"{address(index)}:{CLIENT_PORT}",
            "--insecure",
            "--peer-domain",
            self.domain_files[3 - index],
        ]
        with open(path, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.addCleanup(lambda: proc.poll() is None or proc.wait())
        return proc

    def output(self, name: str) -> str:
        with open(os.path.join(self.dir, f"client-{name}.out")) as f:
            return f.read()

    def assert_tone(self, path: str, freq: float) -> None:
        samples = read_wav(path)
        self.assertGreater(len(samples), 8000 * 0.8, f"less than 0.8 s recorded in {path}")
        peak, share = peak_frequency(samples[800:8800])
        self.assertEqual(peak, freq, path)
        self.assertGreater(share, 0.5, path)

    def reference_clients(self) -> None:
        """A sealed message and a call with tones, Alice's second number to
        Bob's, with real cryptify-client processes keyed across domains."""
        heard = {name: os.path.join(self.dir, f"{name}.wav") for name in ("alice", "bob")}
        bob = self.client(
            "bob", 2, BOB2, "listen", "--auto-answer", "--tone", "1000", "--record", heard["bob"]
        )
        wait_for(lambda: "attached" in self.output("bob"), "Bob's client attached", CEILING)
        sent = self.client(
            "send", 1, ALICE2, "send", BOB2, "sealed across", "--to-account", "beta", "--wait"
        )
        self.assertEqual(sent.wait(timeout=CEILING), 0, self.output("send"))
        opened = f"from {ALICE2} (alpha): sealed across"
        wait_for(lambda: opened in self.output("bob"), "the message opened by Bob", CEILING)
        alice = self.client(
            "alice",
            1,
            ALICE2,
            "call",
            BOB2,
            "--to-account",
            "beta",
            "--tone",
            "600",
            "--record",
            heard["alice"],
            "--duration",
            "2",
        )
        self.assertEqual(alice.wait(timeout=CEILING), 0, self.output("alice"))
        self.assertIn(f"to {BOB2} (beta): talk", self.output("alice"))
        wait_for(lambda: "recorded" in self.output("bob"), "Bob's recording", CEILING)
        self.assertIn(f"from {ALICE2} (alpha): incoming", self.output("bob"))
        self.assert_tone(heard["alice"], 1000)
        self.assert_tone(heard["bob"], 600)
        bob.terminate()
        bob.wait(timeout=CEILING)

    def blackhole(self, add: bool) -> None:
        verb = "add" if add else "del"
        for index, other in ((1, 2), (2, 1), (1, 12)):
            self.net.hosts[index - 1].run("ip", "route", verb, "blackhole", f"{address(other)}/32")

    # -- the test --------------------------------------------------------

    def test_messages_between_operators(self) -> None:
        """Both ways, across a cut, and refused after ``delete iw-crs``;
        every message answered posted is delivered once."""
        wait_for(lambda: self.link_up(1) and self.link_up(2), "the iw link up", CEILING)
        [row] = self.link_rows(1)
        self.assertEqual(row[:2], [address(2), "up"])
        self.assertNotEqual(row[-1], "-")  # the peer's version
        # A's outgoing connection, to B's second address (addr-map)
        wait_for(lambda: self.link_rows(1)[0][2] == "up", "A's outgoing link up", CEILING)
        self.assertGreater(self.mapped_packets("tcp"), 0)
        self.attach(self.alice, [address(1)])
        self.attach(self.bob, [address(2)])

        # both ways
        first = self.posted(self.alice, BOB, "beta", b"hello beta")
        self.received_once(self.bob, {first})
        self.until(self.alice, lambda: first in self.inbox[ALICE].told, "Alice told delivered")
        back = self.posted(self.bob, ALICE, "alpha", b"hello alpha")
        self.received_once(self.alice, {back})

        # a call: signalling over the link, media through both relays
        wait_for(lambda: self.relay_up(1) and self.relay_up(2), "the relay links", CEILING)
        self.requests += 1
        call = self.requests
        send(
            self.alice.ws,
            type="invite",
            id=call,
            to=BOB,
            mikey=b"opaque I_MESSAGE",
            **{"to-account": "beta"},
        )
        invite = self.expect(self.bob, "invite")
        self.assertEqual((invite["from"], invite["mikey"]), (ALICE, b"opaque I_MESSAGE"))
        self.assertEqual(invite["relay-host"], address(2))  # Bob's leg: B's relay
        session = self.expect(self.alice, "session")
        self.assertEqual(session["relay-host"], address(1))  # Alice's leg: A's relay
        self.assertEqual((session["id"], session["session"]), (call, invite["session"]))
        send(self.bob.ws, type="ringing", session=invite["session"])
        send(self.bob.ws, type="talk", session=invite["session"])
        self.expect(self.alice, "ringing")
        self.expect(self.alice, "talk")
        before = self.mapped_packets("udp")
        self.relayed_both_ways(session, invite)
        # A's relay sent Bob's media to B's second address (addr-map)
        self.assertGreater(self.mapped_packets("udp"), before)
        # show iw-crs's data columns: A placed the call, B took it
        self.assertEqual(self.link_rows(1)[0][4:7], ["up", "up", "down"])
        self.assertEqual(self.link_rows(2)[0][4:7], ["up", "down", "up"])
        send(self.bob.ws, type="hangup", session=invite["session"], code="normal")
        hangup = self.expect(self.alice, "hangup")
        self.assertEqual((hangup["code"], hangup["who"]), ("normal", "callee"))

        # the reference client across domains: a sealed message, a call with tones
        self.reference_clients()

        # the link cut while Alice posts: kept at A, delivered once after
        self.blackhole(True)
        try:
            requests = [self.post(self.alice, BOB, "beta", b"cut %d" % n) for n in range(3)]
            answers = [self.answer(self.alice, r) for r in requests]
        finally:
            self.blackhole(False)
        self.assertEqual([a["type"] for a in answers], ["posted"] * 3)
        self.received_once(self.bob, {str(a["message"]) for a in answers})

        # delete iw-crs at A: its traffic is refused, B keeps Bob's posts
        self.cli(1, "delete", "iw-crs", address(2))
        wait_for(lambda: not self.link_up(2), "B's link down after delete at A", CEILING)
        refused = self.answer(self.alice, self.post(self.alice, BOB, "beta", b"refused"))
        self.assertEqual((refused["type"], refused.get("code")), ("error", "not-found"))
        kept = [
            self.answer(self.bob, self.post(self.bob, ALICE, "alpha", b"kept %d" % n))
            for n in range(2)
        ]
        self.assertEqual([a["type"] for a in kept], ["posted"] * 2)
        self.cli(1, "add", "iw-crs", address(2), SECRET)
        self.received_once(self.alice, {str(a["message"]) for a in kept} | {back})
        self.assertNotIn(b"refused", [c for _, c in self.inbox[BOB].messages])


class IwOperatorsWorkersTests(IwOperatorsTests):
    """Operator A with ``workers 2`` (docs/workers.md, Inter-working): its
    parent keeps the inter-working link and the forwarder; Alice's worker
    posts through it and calls over it."""

    LOCAL = {1: "workers 2\n"}

    def call(self, caller: Client, callee: Client, to_account: str, data: list[str]) -> None:
        """``caller`` calls ``callee`` of the other operator: invite, ringing,
        talk and the callee's hangup cross the link; while it talks, A's
        ``show iw-crs`` DATA-LINK, DATA-OUTGOING and DATA-INCOMING are
        ``data``."""
        self.requests += 1
        send(
            caller.ws,
            type="invite",
            id=self.requests,
            to=callee.uri,
            mikey=b"opaque I_MESSAGE",
            **{"to-account": to_account},
        )
        invite = self.expect(callee, "invite")
        self.assertEqual(invite["from"], caller.uri)
        session = self.expect(caller, "session")
        self.assertEqual(session["session"], invite["session"])
        send(callee.ws, type="ringing", session=invite["session"])
        send(callee.ws, type="talk", session=invite["session"])
        self.expect(caller, "ringing")
        self.expect(caller, "talk")
        self.assertEqual(self.link_rows(1)[0][4:7], data)
        send(callee.ws, type="hangup", session=invite["session"], code="normal")
        self.assertEqual(self.expect(caller, "hangup")["who"], "callee")

    def test_messages_between_operators(self) -> None:
        """Messages both ways, each once, with ``delivered`` back; calls both
        ways, shown in A's ``show iw-crs`` while they last."""
        wait_for(lambda: self.link_up(1) and self.link_up(2), "the iw link up", CEILING)
        self.attach(self.alice, [address(1)])
        self.attach(self.bob, [address(2)])
        sent = {self.posted(self.alice, BOB, "beta", b"to beta %d" % n) for n in range(5)}
        self.received_once(self.bob, sent)
        self.until(self.alice, lambda: sent <= self.inbox[ALICE].told, "Alice told delivered")
        back = {self.posted(self.bob, ALICE, "alpha", b"to alpha %d" % n) for n in range(5)}
        self.received_once(self.alice, back)
        self.until(self.bob, lambda: back <= self.inbox[BOB].told, "Bob told delivered")
        wait_for(lambda: self.relay_up(1) and self.relay_up(2), "the relay links", CEILING)
        self.call(self.alice, self.bob, "beta", ["up", "up", "down"])
        self.call(self.bob, self.alice, "alpha", ["up", "down", "up"])

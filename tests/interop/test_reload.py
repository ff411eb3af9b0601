"""SIGHUP (``systemctl reload``) on a real ``twistd crs``: clients and calls stay.

Two `websockets` clients are attached with a call answered between them;
crs.conf is edited and the process gets SIGHUP.  The new limit applies to
the next connection, the change that needs a restart is named in the log
and not applied, both clients and the call are still there (the call is
then hung up through the CRS), and a file that no longer parses is
refused with the running configuration kept.

The same for a real ``twistd cig`` with a call up between a secure
client and a PBX phone (kamailio and baresip), its metrics scraped
while the call runs.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from typing import Any

import cbor2
from twisted.internet import threads

from cryptify.client.calls import END, CallEvent
from tests.interop._cig import SecurePbxFixture
from tests.interop._crs import CALLEE, CALLER, CrsFixture, recv, send
from tests.interop._metrics import scrape
from tests.interop._pbx import until
from tests.interop._procs import free_port, wait_for
from tests.interop._ws import ws_connect

try:
    from websockets.exceptions import ConnectionClosed
except ImportError:  # pragma: no cover
    ConnectionClosed = Exception  # type: ignore[assignment,misc]

#: A frame larger than the reloaded limit (2048) and smaller than the default.
BIG = 3000


def too_large(answer: Any) -> bool:
    """Whether the CRS refused a frame as too large (answer or close code 1009)."""
    if isinstance(answer, dict):
        return answer.get("code") == "too-large"
    return bool(answer == 1009)


class CrsReloadTests(CrsFixture):
    def crs_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log", "crs.log")) as f:
                return f.read()
        except OSError:
            return ""

    def hup(self, marker: str, count: int) -> None:
        """SIGHUP the CRS and wait for the C{count}-th log line holding C{marker}."""
        crs = next(p for p in self.procs if p.name == "crs")
        crs.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.crs_log().count(marker) >= count, marker)

    def big_frame_answer(self) -> Any:
        """Open a new connection and send one frame of BIG octets: the CRS's answer,
        or the close code when it closed the connection instead."""
        cafile = os.path.join(self.dir, "data", "tls", "crs.crt")
        tls = ssl.create_default_context(cafile=cafile)
        ws = ws_connect(f"wss://127.0.0.1:{self.client_port}/", ssl=tls, subprotocols=["umsg.1"])
        try:
            send(ws, type="attach", id=1, account="acme", uri=CALLER, versions=[1], app="x" * BIG)
            try:
                return cbor2.loads(ws.recv(timeout=30))
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd is not None else None
        finally:
            ws.close()

    def edit_conf(self, old: str, new: str) -> None:
        with open(self.conf) as f:
            text = f.read()
        assert old in text, old
        with open(self.conf, "w") as f:
            f.write(text.replace(old, new))

    def scenario(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        caller, callee = self.attach(CALLER), self.attach(CALLEE)
        try:
            send(caller, type="invite", id=11, to=CALLEE, mikey=b"\x01")
            offer = recv(caller, "session")
            invite = recv(callee, "invite")
            send(callee, type="talk", session=invite["session"])
            recv(caller, "talk")
            results["before"] = self.big_frame_answer()
            self.edit_conf(
                f"listen 127.0.0.1 {self.client_port}",
                f"listen 127.0.0.1 {free_port()}\nclient-max-message 2048",
            )
            self.hup("configuration reloaded", 1)
            results["after"] = self.big_frame_answer()
            results["session"] = self.cli("show", "session")[1]
            # the call still runs between the two connections attached before
            send(caller, type="hangup", session=offer["session"], code="normal")
            results["hangup"] = recv(callee, "hangup")
            self.edit_conf("client-max-message 2048", "client-max-message 2048 nonsense")
            self.hup("configuration not reloaded", 1)
            results["still"] = self.big_frame_answer()
            results["services"] = self.cli("show", "services")
        finally:
            caller.close()
            callee.close()
        return results

    async def test_reload_keeps_clients_and_call(self) -> None:
        """SIGHUP applies client-max-message to new connections, names listen as
        needing a restart (the old port still serves), keeps the attached clients
        and their call, and refuses a broken file keeping what runs."""
        results = await threads.deferToThread(self.scenario)
        self.assertFalse(too_large(results["before"]), results["before"])
        self.assertTrue(too_large(results["after"]), results["after"])
        self.assertIn("talk", results["session"])
        self.assertEqual(results["hangup"]["code"], "normal")
        self.assertTrue(too_large(results["still"]), results["still"])
        self.assertEqual(results["services"][0], 0)
        log = self.crs_log()
        self.assertIn("client-max-message changed: applied", log)
        self.assertIn("listen changed: it takes effect only after a restart", log)
        self.assertIn("unexpected value", log)
        self.assertNotIn("testpoolkey", log)


class CigReloadTests(SecurePbxFixture):
    """SIGHUP on a real ``twistd cig`` with a call up to a PBX phone."""

    def cig_conf_extra(self) -> str:
        self.metrics_port = free_port()
        return f"metrics {{ bind {self.metrics_port}; }}\n"

    def cig_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "cig-log", "cig.log")) as f:
                return f.read()
        except OSError:
            return ""

    def edit_cig_conf(self) -> None:
        """Add a PBX server to the tel extension map (live) and move the SIP
        port (needs a restart)."""
        path = os.path.join(self.dir, "cig.conf")
        with open(path) as f:
            text = f.read()
        trunk = f'@127.0.0.1:{self.pbx.kam_port}"; }}'
        bind = f"bind 127.0.0.1 {self.cig_port};"
        assert trunk in text and bind in text, text
        other = 'entry other tel "tel:+8888;77{ext}" sip "sip:{ext}@127.0.0.2:5999"; }'
        text = text.replace(trunk, trunk[:-1] + other)
        text = text.replace(bind, f"bind 127.0.0.1 {free_port(socket.SOCK_DGRAM)};")
        with open(path, "w") as f:
            f.write(text)

    async def test_reload_keeps_pbx_call(self) -> None:
        """With a secure client talking to the PBX phone through the CIG, SIGHUP
        after editing cig.conf adds the new PBX server to the SIP peers, names
        the moved SIP port for a restart, keeps the call (the metrics still
        count it, bridged) and the client's hangup still reaches the phone."""
        phone = self.phone()
        await phone.start()
        call = await self.talk(phone)
        self.edit_cig_conf()
        self.procs["cig"].proc.send_signal(signal.SIGHUP)
        await until(lambda: "configuration reloaded" in self.cig_log(), "the reload", 30)
        status = await self.in_thread(self.cig_cli, "status")
        self.assertIn("PBX 127.0.0.2:5999/udp", status)
        self.assertIn("ANSWER", await self.in_thread(self.call_states))
        code, metrics = await self.in_thread(scrape, self.metrics_port)
        self.assertEqual(code, 200)
        self.assertEqual(metrics["cryptify_cig_calls"], 1)
        self.assertEqual(metrics["cryptify_cig_link_up{link=crs}"], 1)
        self.assertEqual(metrics["cryptify_cig_link_up{link=cig_relay}"], 1)
        self.assertEqual(metrics["cryptify_cig_bridge_calls"], 1)
        self.assertEqual(metrics["cryptify_cig_query_ok{query=bridge}"], 1)
        self.assertEqual(metrics["cryptify_cig_reloads_total"], 1)
        self.assertIn("cryptify_cig_sip_peer_up{peer=127.0.0.2:5999/udp}", metrics)
        ended = phone.until(lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END)
        phone.hangup(call)
        await ended
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.context())
        log = self.cig_log()
        self.assertIn("map changed: applied", log)
        self.assertIn(
            "interfaces sip bind (port) changed: it takes effect only after a restart", log
        )

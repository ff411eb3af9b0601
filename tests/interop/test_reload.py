"""SIGHUP (``systemctl reload``) on a real ``twistd crs``: clients and calls stay.

Two `websockets` clients are attached with a call answered between them;
crs.conf is edited and the process gets SIGHUP.  The new limit applies to
the next connection, the change that needs a restart is named in the log
and not applied, both clients and the call are still there (the call is
then hung up through the CRS), and a file that no longer parses is
refused with the running configuration kept.
"""

from __future__ import annotations

import os
import signal
import ssl
from typing import Any

import cbor2
from twisted.internet import threads

from tests.interop._procs import free_port, wait_for
from tests.interop._ws import ws_connect
from tests.interop.test_calls import CALLEE, CALLER, _CrsFixture, recv, send

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


class CrsReloadTests(_CrsFixture):
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

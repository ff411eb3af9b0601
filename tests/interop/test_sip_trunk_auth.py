"""
The CIG as a SIP trunk that authenticates: kamailio's C{auth} and
C{registrar} modules ask for credentials (usrloc in memory, one static
password checked with C{pv_www_authenticate}/C{pv_proxy_authenticate}),
baresip is registered behind it as 101.

In this process, on the real reactor: the SIF registers (digest, qop=auth,
MD5 or SHA-256), refreshes, fails with a wrong password, registers again
at a restarted kamailio (whose binding is then used for a call to the
CIG's AOR), and places a call that kamailio challenges with 407 and
baresip answers. With C{twistd cig}: a C{pbx_account} with a 0600
password file is registered and shown in C{cig-cli status}; the password
is in no log; a password file others can read stops start-up.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cryptify.cig.calls import Call
from cryptify.cig.sif.register import RegState
from tests.interop._pbx import (
    AnsweringLeg,
    require_pbx,
    sleep,
    until,
)
from tests.interop._procs import WAIT, Twistd, free_port, run_cli, short_tempdir, tcp_answers
from tests.interop._trunk import PASSWORD, AuthPbx, TrunkAuthCase


class RegistrationTests(TrunkAuthCase):
    """REGISTER against kamailio's registrar with digest (MD5, qop=auth)."""

    async def test_registered_and_refreshed(self) -> None:
        """
        The first REGISTER is challenged, the second saved; with 10 s
        granted, the binding is refreshed (higher CSeq, saved again)
        before it runs out.
        """
        registration = self.registration()
        registration.start()
        await until(
            lambda: registration.state is RegState.REGISTERED,
            "the CIG registered" + self.pbx.context(),
            timeout=WAIT,
        )
        self.assertIn("CHALLENGE REGISTER", self.pbx.log("kamailio.log"))
        await until(
            lambda: len(self.pbx.saved()) >= 3,
            "two refreshes" + self.pbx.context(),
            timeout=WAIT + 10,
        )
        numbers = [int(n) for n in self.pbx.saved()]
        self.assertEqual(numbers, sorted(set(numbers)))
        self.assertEqual(registration.state, RegState.REGISTERED)
        self.assertEqual(self.events, [])
        self.assertNotIn(PASSWORD, self.pbx.log("kamailio.log"))

    async def test_wrong_password_refused(self) -> None:
        """
        With a wrong password kamailio challenges again; the CIG does
        not send those credentials a third time and shows FAILED; no
        binding is saved.
        """
        registration = self.registration(password="not-the-password")
        registration.start()
        await until(
            lambda: registration.state is RegState.FAILED,
            "the registration failed" + self.pbx.context(),
            timeout=WAIT,
        )
        self.assertEqual(self.pbx.log("kamailio.log").count("CHALLENGE REGISTER"), 2)
        self.assertEqual(self.pbx.saved(), [])

    async def test_restarted_pbx_registered_again(self) -> None:
        """
        kamailio restarted (its in-memory bindings gone) has the CIG's
        binding again by the next refresh, and uses it: a call to the
        CIG's AOR through kamailio reaches the CIG.
        """
        registration = self.registration()
        registration.start()
        await until(lambda: self.pbx.saved(), "the first binding" + self.pbx.context())
        await self.pbx.restart_kamailio()
        await until(
            lambda: self.pbx.saved("kamailio-2.log"),
            "the binding saved at the restarted kamailio" + self.pbx.context(),
            timeout=WAIT + 10,
        )
        self.assertEqual(registration.state, RegState.REGISTERED)
        # A call to the AOR: kamailio looks the binding up and sends it to the CIG.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            me = s.getsockname()[1]
            body = (
                "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                "m=audio 40000 RTP/AVP 0\r\n"
            )
            invite = (
                f"INVITE sip:cig@127.0.0.1:{self.kam_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKaor1;rport\r\n"
                f"From: <sip:555@127.0.0.1>;tag=t1\r\nTo: <sip:cig@127.0.0.1:{self.kam_port}>\r\n"
                f"Call-ID: aor-call\r\nCSeq: 1 INVITE\r\nContact: <sip:555@127.0.0.1:{me}>\r\n"
                f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            )
            s.sendto(invite.encode(), ("127.0.0.1", self.kam_port))
            await until(
                lambda: any(r[1].startswith("sip:cig@") for r in self.calls.rows()),
                "the call to the AOR at the CIG" + self.pbx.context(),
            )
        self.assertEqual(self.calls.rows()[0][3], "tel:+4670999")


class Sha256RegistrationTests(TrunkAuthCase):
    """The same registrar challenging with SHA-256 (RFC 8760)."""

    algorithm = "SHA-256"

    async def test_registered(self) -> None:
        """A SHA-256 challenge is answered and the binding saved."""
        registration = self.registration()
        registration.start()
        await until(
            lambda: registration.state is RegState.REGISTERED,
            "the CIG registered with SHA-256" + self.pbx.context(),
            timeout=WAIT,
        )
        self.assertTrue(self.pbx.saved())
        answers = [data for data in self.sent if b"Authorization: Digest" in data]
        self.assertTrue(answers)
        self.assertIn(b"algorithm=SHA-256", answers[0])


class ChallengedCallTests(TrunkAuthCase):
    """A call the CIG places, challenged by kamailio with 407."""

    async def test_call_completes(self) -> None:
        """
        kamailio answers the CIG's INVITE with 407; the CIG sends it again
        with Proxy-Authorization; kamailio lets it through to baresip,
        which answers; hanging up sends BYE along the route set.
        """
        self.sif.keyring = self.keyring()
        leg = AnsweringLeg()
        call = Call("tel:+4670123456", "tel:+8888;101")
        routed = self.sif.router.route("tel", call.in_from, call.in_to)
        call.out_from, call.out_to = routed.out_from, routed.out_to
        self.sif.place_call(call, leg)
        leg.answered_d.addTimeout(WAIT, reactor)  # type: ignore[arg-type]
        try:
            await leg.answered_d
        except Exception as exc:
            raise AssertionError(f"{exc}{self.pbx.context()}") from exc
        log = self.pbx.log("kamailio.log")
        self.assertIn("CHALLENGE INVITE", log)
        self.assertIn("AUTHORIZED INVITE", log)
        self.assertIn(" as cig", log)
        await sleep(0.5)
        self.sif.hang_up(call)
        await until(self.pbx.call_ended, "baresip to see the BYE" + self.pbx.context())
        self.assertEqual(self.calls.rows()[0][4], "HANGUP")

    async def test_without_credentials_rejected(self) -> None:
        """Without a pbx_account the 407 is the call's answer."""
        leg = AnsweringLeg()
        call = Call("tel:+4670123456", "tel:+8888;101")
        routed = self.sif.router.route("tel", call.in_from, call.in_to)
        call.out_from, call.out_to = routed.out_from, routed.out_to
        self.sif.place_call(call, leg)
        await until(lambda: leg.events, "the leg told" + self.pbx.context(), timeout=WAIT)
        self.assertEqual(leg.events, ["rejected 407"])
        leg.answered_d.addErrback(lambda failure: None)


CIG_CONF = """
map mapsip2tel {{ entry nine sip "sip:9{{n}}@{{host}}" tel "tel:+{{n}}"; }}
interfaces {{
    sip {{
        extension map mapsip2tel;
        bind 127.0.0.1 {cig_port};
        rtp_port_range 31300 31400;
        trusted_peer 127.0.0.1;
        pbx_account "sip:127.0.0.1:{kam_port}" {{
            username "cig";
            password_file "{d}/pbx.secret";
            register 60;
        }}
    }}
}}
crs {{ address 192.0.2.10 5223; keystore "{d}/userdata"; }}
relay {{ control "{d}/relay.sock"; }}
management {{ bind 127.0.0.1 {mgmt_port}; cookie "{d}/mgmt.cookie"; socket "{d}/cig.sock"; }}
logging {{ dir "{d}/log"; }}
"""


class TwistdRegistrationTests(TestCase):
    """C{twistd cig} with a pbx_account: registered, in status, password kept secret."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        require_pbx()
        self.dir = d = short_tempdir(self)
        self.cig_port = free_port(socket.SOCK_DGRAM)
        self.mgmt_port = free_port()
        self.pbx = AuthPbx(self, d, self.cig_port)
        await self.pbx.start()
        self.conf = os.path.join(d, "cig.conf")
        with open(self.conf, "w") as f:
            f.write(
                CIG_CONF.format(
                    d=d,
                    cig_port=self.cig_port,
                    kam_port=self.pbx.kam_port,
                    mgmt_port=self.mgmt_port,
                )
            )

    def write_password(self, mode: int) -> None:
        path = os.path.join(self.dir, "pbx.secret")
        with open(path, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(path, mode)

    def start_cig(self) -> Twistd:
        cig = Twistd(self.dir, "cig", "--config", self.conf, "--notify", "")
        self.addCleanup(cig.stop)
        return cig

    def status(self) -> str:
        code, out, err = run_cli(
            "cig-cli",
            "--address",
            f"127.0.0.1:{self.mgmt_port}",
            "--cookie",
            os.path.join(self.dir, "mgmt.cookie"),
            "status",
        )
        self.assertEqual(code, 0, err)
        return out

    async def test_registered_in_status(self) -> None:
        """
        The password file's account is registered at kamailio; cig-cli
        status shows it REGISTERED; neither cig.log nor twistd's log holds
        the password.
        """
        self.write_password(0o600)
        cig = self.start_cig()
        await until(lambda: tcp_answers(self.mgmt_port), "CIG management port", timeout=WAIT)
        await until(
            lambda: self.pbx.saved(), "the CIG's binding" + self.pbx.context(), timeout=WAIT
        )
        await until(lambda: "REGISTERED" in self.status(), "REGISTERED in status", timeout=WAIT)
        line = next(x for x in self.status().splitlines() if "REG sip:cig@" in x)
        self.assertIn(f"sip:cig@127.0.0.1:{self.pbx.kam_port}", line)
        logs = cig.output()
        for name in os.listdir(os.path.join(self.dir, "log")):
            with open(os.path.join(self.dir, "log", name), errors="replace") as f:
                logs += f.read()
        self.assertIn("PBX accounts: cig at", logs)
        self.assertNotIn(PASSWORD, logs)

    def test_unsafe_password_file_stops_startup(self) -> None:
        """A password file others can read: twistd cig exits, saying why."""
        self.write_password(0o644)
        cig = self.start_cig()
        status, err = cig.wait_exit()
        self.assertNotEqual(status, 0)
        self.assertIn("accessible by group or others", err + cig.output())
        self.assertNotIn(PASSWORD, err + cig.output())

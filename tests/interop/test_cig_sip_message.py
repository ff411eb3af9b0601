"""SIP MESSAGE through a real CIG, both ways, with sipp as the PBX.

A real CRS (redis-server, ``twistd crs``) with two users, a ``twistd cig``
attached to it with keys and ``sip { messaging true; }``, and sipp
(Debian ``sip-tester``) on loopback:

- PBX -> secure user: sipp sends a ``text/plain`` MESSAGE, the CIG answers
  202 once the CRS stored the sealed message, and a listening
  ``cryptify-client`` shows it verified as sent by ``tel:+8888;101``;
  a MESSAGE for no route gets 404, one in HTML 415;
- secure user -> PBX: ``cryptify-client send tel:+8888;101 ... --wait``
  reaches sipp (as UAS) as a MESSAGE, ``delivered`` only after sipp's
  200; a 404 from sipp comes back to the sender as a sealed
  "Not delivered" message; a 407 challenge is answered with the
  ``pbx_account`` credentials and sipp checks them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

from twisted.trial.unittest import SkipTest

from tests.interop._cigmail import CIG_URI, LISTENER, SENDER, SLOW, TOP, CigMailCase
from tests.interop._procs import BIN, free_port, wait_for

TEXT_IN = "hello from sipp"
TEXT_OUT = "hej fran secure"
PASSWORD = "trunk-secret"


def message_from_pbx(to: str, content_type: str, body: str, status: int) -> str:
    """A sipp UAC scenario: one MESSAGE, the final status expected."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="MESSAGE from the PBX">
  <send retrans="500"><![CDATA[
      MESSAGE sip:{to}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:101@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{to}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 MESSAGE
      Max-Forwards: 70
      Content-Type: {content_type}
      Content-Length: [len]

      {body}
]]></send>
  <recv response="{status}"/>
</scenario>
"""


def answer(status: str, extra: str = "") -> str:
    return f"""  <send><![CDATA[
      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]{extra}
      Content-Length: 0
]]></send>
"""


#: sipp wants every variable used: the two matches go back in the answer.
USED = "\n      Subject: [$1] [$2]"


def pbx_receives(status: str, extra: str = USED) -> str:
    """A sipp UAS scenario: one MESSAGE carrying TEXT_OUT, answered ``status``."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="MESSAGE to the PBX">
  <recv request="MESSAGE">
    <action>
      <ereg regexp="{TEXT_OUT}" search_in="body" check_it="true" assign_to="1"/>
      <ereg regexp="text/plain;charset=UTF-8" search_in="hdr" header="Content-Type:"
            check_it="true" assign_to="2"/>
    </action>
  </recv>
{answer(status, extra)}
</scenario>
"""


CHALLENGE = answer(
    "401 Unauthorized",
    '\n      WWW-Authenticate: Digest realm="pbx.example", nonce="n0nce1", algorithm=MD5',
)
#: The PBX challenges the MESSAGE (401; sipp's verifyauth reads Authorization only),
#: checks the credentials of the second one.
PBX_CHALLENGES = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="MESSAGE to the PBX, challenged">
  <recv request="MESSAGE"/>
{CHALLENGE}
  <recv request="MESSAGE">
    <action>
      <verifyauth assign_to="1" username="cig" password="{PASSWORD}"/>
    </action>
  </recv>
  <nop hide="true" test="1" next="good"/>
{answer("403 Forbidden")}
  <nop hide="true" next="end"/>
  <label id="good"/>
{answer("200 OK")}
  <label id="end"/>
</scenario>
"""


class SipMessageTests(CigMailCase):
    """sipp as the PBX, a real CRS and CIG, cryptify-client as the secure users.

    No write mailbox (one would take the messages for ``tel:+8888;EXT``
    first), and no OPTIONS keep-alive (sipp would take it for the MESSAGE).
    """

    cig_args = ("--sip-keepalive", "0")

    def mailboxes(self) -> str:
        return ""

    def setUp(self) -> None:
        self.sipp = shutil.which("sipp")
        if self.sipp is None:
            raise SkipTest("sipp (Debian sip-tester) is not installed")
        self.pbx_port = free_port(socket.SOCK_DGRAM)
        super().setUp()

    def cig_extra(self) -> str:
        return f"""
map sip2tel {{ entry nine sip "sip:9{{n}}@{{host}}" tel "tel:+{{n}}"; }}
map telsrc {{ entry pbx sip "sip:{{user}}@{{host}}" tel "tel:+8888;{{user}}"; }}
map tel2sip {{ entry ext tel "tel:+8888;{{ext}}" sip "sip:{{ext}}@127.0.0.1:{self.pbx_port}"; }}
map sipsrc {{ entry users tel "tel:+{{n}}" sip "sip:{{n}}@secure.example"; }}
"""

    def sip_interface(self) -> str:
        d = self.dir
        with open(os.path.join(d, "pbx.secret"), "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(os.path.join(d, "pbx.secret"), 0o600)
        return f"""
    tel {{ extension map tel2sip; source map telsrc; }}
    sip {{
        extension map sip2tel;
        source map sipsrc;
        bind 127.0.0.1 {self.sip_port};
        messaging true;
        trusted_peer 127.0.0.1;
        pbx_account "sip:127.0.0.1:{self.pbx_port}" {{
            username "cig";
            password_file "{d}/pbx.secret";
        }}
    }}"""

    def sipp_run(self, scenario: str, *args: str) -> subprocess.Popen[bytes]:
        path = os.path.join(self.dir, f"scenario{time.time_ns()}.xml")
        with open(path, "w") as f:
            f.write(scenario)
        argv = [self.sipp or "sipp", "-sf", path, "-i", "127.0.0.1", "-m", "1", "-nostdin"]
        argv += ["-timeout", "60", "-timeout_error", *args]
        proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    def sipp_ok(self, proc: subprocess.Popen[bytes]) -> None:
        out, err = proc.communicate(timeout=SLOW)
        self.assertEqual(
            proc.returncode,
            0,
            f"sipp failed:\n{err.decode(errors='replace')}\n{out.decode(errors='replace')[-2000:]}"
            f"\ncig.log:\n{self.cig_log()[-3000:]}",
        )

    def pbx_sends(self, to: str, content_type: str, body: str, status: int) -> None:
        proc = self.sipp_run(
            message_from_pbx(to, content_type, body, status),
            f"127.0.0.1:{self.sip_port}",
            "-p",
            str(free_port(socket.SOCK_DGRAM)),
        )
        self.sipp_ok(proc)

    def pbx_answers(self, scenario: str) -> subprocess.Popen[bytes]:
        return self.sipp_run(scenario, "-p", str(self.pbx_port))

    def test_pbx_to_secure_user(self) -> None:
        """202 from the CIG, the text at the listener verified as from tel:+8888;101;
        no route: 404; HTML: 415."""
        out = self.listen(LISTENER)
        self.pbx_sends("94622222", "text/plain;charset=UTF-8", TEXT_IN, 202)
        wait_for(
            lambda: f"from {CIG_URI};101: {TEXT_IN}" in self.read(out),
            "the MESSAGE at the listener",
            SLOW,
        )
        # the README's stand-in PBX user does the same
        with open(os.path.join(TOP, "etc", "pbx-message-sipp.xml")) as f:
            readme = f.read()
        proc = self.sipp_run(
            readme,
            "-s",
            "94622222",
            f"127.0.0.1:{self.sip_port}",
            "-p",
            str(free_port(socket.SOCK_DGRAM)),
        )
        self.sipp_ok(proc)
        wait_for(
            lambda: f"from {CIG_URI};101: hello from the PBX" in self.read(out),
            "the README's MESSAGE",
            SLOW,
        )
        self.assertNotIn("FAILED TO VERIFY", self.read(out))
        self.pbx_sends("555", "text/plain", "nobody", 404)
        self.pbx_sends("94622222", "text/html", "<b>bold</b>", 415)
        self.pbx_sends("94622222", "text/plain", "the last one", 202)
        wait_for(lambda: "the last one" in self.read(out), "the last MESSAGE", SLOW)
        self.assertNotIn("nobody", self.read(out))
        self.assertNotIn("bold", self.read(out))

    def test_secure_user_to_pbx(self) -> None:
        """send --wait returns once sipp answered 200 to the MESSAGE carrying the text."""
        pbx = self.pbx_answers(pbx_receives("200 OK"))
        self.send(f"{CIG_URI};101", TEXT_OUT)
        self.sipp_ok(pbx)
        self.assertIn(f"sent to sip:101@127.0.0.1:{self.pbx_port} by SIP (200)", self.cig_log())

    def test_refused_by_pbx_told_to_sender(self) -> None:
        """sipp answers 404: the sender finds a sealed 'Not delivered' reply from
        tel:+8888;101 saying so."""
        pbx = self.pbx_answers(pbx_receives("404 Not Found"))
        shown = self.send_and_show(f"{CIG_URI};101", TEXT_OUT)
        self.sipp_ok(pbx)
        if "Not delivered:" not in shown:  # it came after the receipt: still stored
            out = self.listen(SENDER)
            wait_for(lambda: "Not delivered:" in self.read(out), "the refusal", SLOW)
            shown = self.read(out)
        self.assertIn(f"from {CIG_URI};101: Not delivered:", shown)
        self.assertIn("did not take it (SIP 404)", shown)

    def send_and_show(self, to: str, text: str) -> str:
        """cryptify-client send ... --wait; what it printed (messages it received too)."""
        done = subprocess.run(
            [os.path.join(BIN, "cryptify-client"), "send", to, text,
             *self.client_args(SENDER), "--wait"],
            capture_output=True, text=True, timeout=SLOW * 2,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr + self.cig_log())
        return done.stdout

    def test_challenged_by_pbx(self) -> None:
        """sipp challenges with 401 and checks the digest of the MESSAGE sent again."""
        pbx = self.pbx_answers(PBX_CHALLENGES)
        self.send(f"{CIG_URI};101", TEXT_OUT)
        self.sipp_ok(pbx)
        self.assertIn("by SIP (200)", self.cig_log())

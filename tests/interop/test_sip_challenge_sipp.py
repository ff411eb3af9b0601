"""
C{twistd cig} challenging its PBX (C{pbx_challenge}), with sipp as the
PBX: sipp's UAC, sending from 127.0.0.2, answers the 401 with its
C{[authentication]} keyword and its call is answered; with a wrong
password the 401 comes again, no call is made, cig.log says so once and
never holds the password. sipp 3.6 computes MD5 only, so the block
offers MD5 here (SHA-256 is checked against kamailio's uac module).
"""

from __future__ import annotations

import os

from tests.interop._procs import wait_for
from tests.interop._sipp import SippCase

PASSWORD = "pbx-In-Secret-5"
PEER = "127.0.0.2"


def scenario(password: str, answered: bool) -> str:
    """INVITE, 401, ACK, INVITE with credentials, then 200/ACK/BYE or 401/ACK."""
    auth = f"[authentication username=pbx password={password}]"
    invite = """
  <send retrans="500"><![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      {auth}
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
  ]]></send>
"""
    ack = """
  <send><![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
"""
    # sipp's [branch] is new at each send: the ACK of a non-2xx carries
    # its INVITE's, three scenario steps back.
    failure_ack = ack.replace("branch=[branch]", "branch=[branch-3]")
    body = (
        invite.format(cseq=1, auth="")
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="401" auth="true"/>\n'
        + failure_ack.format(cseq=1)
        + invite.format(cseq=2, auth=auth)
        + '  <recv response="100" optional="true"/>\n'
    )
    if answered:
        body += (
            '  <recv response="180" optional="true"/>\n'
            '  <recv response="200" rrs="true"/>\n'
            + ack.format(cseq=2)
            + '  <pause milliseconds="200"/>\n'
            + """
  <send retrans="500"><![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 3 BYE
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="200"/>
"""
        )
    else:
        body += '  <recv response="401"/>\n' + failure_ack.format(cseq=2)
    return (
        f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="auth">{body}</scenario>\n'
    )


class ChallengedPbxTests(SippCase):
    """sipp from a pbx_challenge peer: 401 first, then answered with the right password."""

    sipp_ip = PEER

    def setUp(self) -> None:
        self.secret = os.path.abspath(self.mktemp())
        with open(self.secret, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(self.secret, 0o600)
        super().setUp()

    @property  # type: ignore[override]
    def sip_extra(self) -> str:
        return (
            f"\n        trusted_peer {PEER};"
            f'\n        pbx_challenge "{PEER}" {{ realm "cig.test"; username "pbx";'
            f' password_file "{self.secret}"; algorithm MD5; }}'
        )

    def call(self, password: str, answered: bool) -> None:
        """
        One sipp call to 94670123456. sipp computes its digest for
        C{sip:REMOTE_IP:PORT} unless told the Request-URI (C{-auth_uri}),
        and the CIG checks that the credentials are for the request's URI.
        """
        self.run_sipp(
            "-s",
            "94670123456",
            "-m",
            "1",
            "-auth_uri",
            f"94670123456@127.0.0.1:{self.sip_port}",
            scenario=scenario(password, answered),
        )

    def cig_log(self) -> str:
        with open(os.path.join(self.dir, "log", "cig.log"), errors="replace") as f:
            return f.read()

    def logs(self) -> str:
        text = self.cig.output()
        folder = os.path.join(self.dir, "log")
        for name in os.listdir(folder):
            with open(os.path.join(folder, name), errors="replace") as f:
                text += f.read()
        return text

    def test_answered_with_credentials(self) -> None:
        """
        The INVITE without credentials gets 401, the one with them is
        routed and answered; session.log has the one call; the INIT line
        names the challenged peer and no log holds the password.
        """
        self.call(PASSWORD, answered=True)
        wait_for(lambda: "hangup" in self.session_log(), "the call's hangup in session.log")
        states = [line.split(", ")[6] for line in self.session_log().splitlines()]
        self.assertEqual(states, ["routing", "routed", "trying", "ringing", "talk", "hangup"])
        logs = self.logs()
        self.assertIn(f"PBX requests challenged (digest): from {PEER}/32 (realm cig.test", logs)
        self.assertNotIn(PASSWORD, logs)

    def test_wrong_password_refused(self) -> None:
        """
        With a wrong password the second INVITE gets 401 again: no call
        (nothing in session.log), one cig.log line naming the source.
        """
        self.call("not-it", answered=False)
        wait_for(lambda: "digest credentials refused" in self.logs(), "the refusal in cig.log")
        self.assertEqual(self.session_log(), "")
        self.assertEqual(self.cig_log().count("digest credentials refused"), 1)
        self.assertIn(f"refusing SIP from {PEER}", self.logs())

    def test_unchallenged_peer_unchanged(self) -> None:
        """127.0.0.1 has no pbx_challenge: its OPTIONS is answered 200 as before."""
        self.assertEqual(self.client.options(), 200)

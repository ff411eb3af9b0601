"""
Tests for C{pbx_challenge} blocks in cig.conf's sip interface: the PBXs
whose requests the CIG asks for digest credentials.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import ConfigError, parse_cig_config
from cryptify.config.cig_model import (
    CigConfig,
    Interfaces,
    PbxChallenge,
    SipInterface,
    render_cig_config,
)
from cryptify.ops.cig import DIRECTIVES
from cryptify.plugins.cig import describe


def sip(body: str) -> str:
    return f"interfaces {{\n  sip {{\n{body}\n  }}\n}}\n"


class PbxChallengeConfigTests(SynchronousTestCase):
    """What a pbx_challenge block says, and its refusals."""

    def test_parsed(self) -> None:
        """Each block lands in a PbxChallenge; peers read as trusted_peer reads them."""
        cfg = parse_cig_config(
            sip(
                '    pbx_challenge "192.0.2.7" {\n'
                '        realm "cig.example"; username "pbx";\n'
                '        password_file "/etc/cig/pbx-in.secret"; algorithm md5 sha-256;\n'
                "    }\n"
                '    pbx_challenge "198.51.100.0/24" { realm "r"; username "u"; password "p"; }'
            )
        )
        self.assertEqual(
            cfg.sip.pbx_challenges,
            (
                PbxChallenge(
                    "192.0.2.7/32",
                    "cig.example",
                    "pbx",
                    password_file="/etc/cig/pbx-in.secret",
                    algorithms=("MD5", "SHA-256"),
                ),
                PbxChallenge("198.51.100.0/24", "r", "u", password="p"),
            ),
        )
        self.assertEqual(cfg.sip.pbx_challenges[1].algorithms, ("SHA-256", "MD5"))

    def test_host_name(self) -> None:
        """A PBX host name is kept (lower case) for the SIF to match against its look-ups."""
        cfg = parse_cig_config(
            sip('pbx_challenge "PBX.Example.com" { realm "r"; username "u"; password "p"; }')
        )
        self.assertEqual(cfg.sip.pbx_challenges[0].peer, "pbx.example.com")

    def test_errors(self) -> None:
        """Each mistake is one clear line with its position."""
        ok = 'realm "r"; username "u"; password "x";'
        cases = {
            'pbx_challenge "192.0.2.1" { realm "r"; username "u"; }': "needs one of",
            'pbx_challenge "192.0.2.1" { username "u"; password "x"; }': "has no 'realm'",
            'pbx_challenge "192.0.2.1" { realm "r"; password "x"; }': "has no 'username'",
            'pbx_challenge "pbx_example!" { ' + ok + " }": "bad host",
            'pbx_challenge "192.0.2.300" { ' + ok + " }": "bad",
            'pbx_challenge "192.0.2.1" { ' + ok + " algorithm SHA-512; }": "bad algorithm",
            'pbx_challenge "192.0.2.1" { ' + ok + " algorithm MD5 MD5; }": "bad algorithm",
            'pbx_challenge "192.0.2.1" { ' + ok + ' realm "s"; }': "duplicate",
            'pbx_challenge "192.0.2.1" { realm "a\\"b"; username "u"; password "x"; }': (
                "bad realm"
            ),
            'pbx_challenge "192.0.2.1" { '
            + ok
            + ' }\npbx_challenge "192.0.2.1/32" { '
            + ok
            + " }": ("listed twice"),
        }
        for body, message in cases.items():
            with self.assertRaises(ConfigError, msg=body) as caught:
                parse_cig_config(sip(body))
            self.assertIn(message, str(caught.exception), body)

    def test_tel_interface_refused(self) -> None:
        """Challenges belong to the PBX side."""
        block = 'pbx_challenge "192.0.2.1" { realm "r"; username "u"; password "x"; }'
        text = "interfaces { tel { " + block + " } }"
        with self.assertRaises(ConfigError) as caught:
            parse_cig_config(text)
        self.assertIn("belongs in the sip interface", str(caught.exception))

    def test_password_not_in_repr_or_init(self) -> None:
        """Neither the config's repr nor the INIT lines show the password; INIT names the peer."""
        cfg = parse_cig_config(
            sip('pbx_challenge "192.0.2.1" { realm "r"; username "u"; password "hunter2"; }')
        )
        self.assertNotIn("hunter2", repr(cfg))
        lines = "\n".join(describe(cfg))
        self.assertNotIn("hunter2", lines)
        self.assertIn("PBX requests challenged (digest): from 192.0.2.1/32 (realm r, user u", lines)

    def test_restart_directive(self) -> None:
        """A changed pbx_challenge takes a restart (passwords are read at start, as root)."""
        found = [d for d in DIRECTIVES if d.name == "interfaces sip pbx_challenge"]
        self.assertEqual([d.live for d in found], [False])


printable = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters='\x7f"\\'),
    min_size=1,
    max_size=30,
).filter(str.isprintable)


@st.composite
def blocks(draw: st.DrawFn) -> PbxChallenge:
    in_file = draw(st.booleans())
    return PbxChallenge(
        draw(st.ip_addresses(v=4).map(lambda a: f"{a}/32")),
        draw(printable),
        draw(printable),
        password=None if in_file else draw(printable),
        password_file=draw(printable) if in_file else None,
        algorithms=draw(
            st.sampled_from([("SHA-256", "MD5"), ("MD5",), ("SHA-256",), ("MD5", "SHA-256")])
        ),
    )


class RoundTripTests(SynchronousTestCase):
    """Written back, a configuration with pbx_challenge blocks reads the same."""

    @given(st.lists(blocks(), max_size=3, unique_by=lambda b: b.peer))
    def test_round_trip(self, found: list[PbxChallenge]) -> None:
        """render_cig_config, then parse: equal blocks."""
        cfg = CigConfig(interfaces=Interfaces(sip=SipInterface(pbx_challenges=tuple(found))))
        self.assertEqual(parse_cig_config(render_cig_config(cfg)), cfg)

    @given(st.text(max_size=80))
    def test_hostile_block(self, inside: str) -> None:
        """Anything inside a pbx_challenge block is read or refused with ConfigError."""
        try:
            parse_cig_config(sip('pbx_challenge "192.0.2.1" { ' + inside + " }"))
        except ConfigError:
            pass

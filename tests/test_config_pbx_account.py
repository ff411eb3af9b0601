"""
Tests for C{pbx_account} blocks in cig.conf's sip interface: the CIG's
credentials at a PBX server and its registration there.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import ConfigError, parse_cig_config
from cryptify.config.cig import MAX_CREDENTIAL_LENGTH, MAX_PBX_ACCOUNTS
from cryptify.config.cig_model import (
    CigConfig,
    Interfaces,
    PbxAccount,
    SipInterface,
    render_cig_config,
)


def sip(body: str) -> str:
    return f"interfaces {{\n  sip {{\n{body}\n  }}\n}}\n"


class PbxAccountTests(SynchronousTestCase):
    """What a pbx_account block says, and its refusals."""

    def test_parsed(self) -> None:
        """Every directive lands in a PbxAccount, in file order; absent ones stay None."""
        cfg = parse_cig_config(
            sip(
                '    pbx_account "sip:pbx.example;transport=tcp" {\n'
                '        username "cig"; password_file "/etc/cig/pbx.secret";\n'
                '        register 600; aor "sip:4670@pbx.example";\n'
                "    }\n"
                '    pbx_account "sip:192.0.2.7:5080" { username "u"; password "p w"; }'
            )
        )
        self.assertEqual(
            cfg.sip.pbx_accounts,
            (
                PbxAccount(
                    "sip:pbx.example;transport=tcp",
                    "cig",
                    password_file="/etc/cig/pbx.secret",
                    register=600,
                    aor="sip:4670@pbx.example",
                ),
                PbxAccount("sip:192.0.2.7:5080", "u", password="p w"),
            ),
        )

    def test_password_not_in_repr(self) -> None:
        """The config object's repr (INIT lines, tracebacks) never shows a password."""
        cfg = parse_cig_config(sip('pbx_account "sip:a" { username "u"; password "hunter2"; }'))
        self.assertNotIn("hunter2", repr(cfg))

    def test_errors(self) -> None:
        """Each mistake is one clear line with its position."""
        cases = {
            'pbx_account "sip:a" { username "u"; }': "needs one of 'password' and 'password_file'",
            'pbx_account "sip:a" { username "u"; password "x"; password_file "/f"; }': (
                "needs one of"
            ),
            'pbx_account "sip:a" { password "x"; }': "has no 'username'",
            'pbx_account "tel:+1" { username "u"; password "x"; }': "bad pbx_account URI",
            'pbx_account "sip:u@a" { username "u"; password "x"; }': "bad pbx_account URI",
            'pbx_account "sip:a" { username "u"; password "x"; register 5; }': "out of range",
            'pbx_account "sip:a" { username "u"; password "x"; register x; }': "bad expiry",
            'pbx_account "sip:a" { username "u"; username "v"; password "x"; }': "duplicate",
            'pbx_account "sip:a" { username ""; password "x"; }': "bad username",
            'pbx_account "sip:a" { username "u"; password "x"; aor "x"; }': "bad aor",
            'pbx_account "sip:a" { username "u"; password "x"; }\n'
            'pbx_account "sip:a" { username "v"; password "y"; }': "listed twice",
        }
        cases['pbx_account "sip:a" { username "u"; password "' + "p" * 300 + '"; }'] = (
            f"1 to {MAX_CREDENTIAL_LENGTH} printable"
        )
        for body, message in cases.items():
            with self.assertRaises(ConfigError, msg=body) as caught:
                parse_cig_config(sip(body))
            self.assertIn(message, str(caught.exception), body)

    def test_bad_password_not_echoed(self) -> None:
        """A password refused (too long, a control character) is not quoted in the error."""
        for password in ("s3cr" * 80, "s3cr\tet"):
            text = sip('pbx_account "sip:a" { username "u"; password "' + password + '"; }')
            with self.assertRaises(ConfigError) as caught:
                parse_cig_config(text)
            self.assertIn("bad password", str(caught.exception))
            self.assertNotIn("s3cr", str(caught.exception))

    def test_tel_interface_refused(self) -> None:
        """Credentials belong to the PBX side."""
        text = 'interfaces { tel { pbx_account "sip:a" { username "u"; password "x"; } } }'
        with self.assertRaises(ConfigError) as caught:
            parse_cig_config(text)
        self.assertIn("belongs in the sip interface", str(caught.exception))

    def test_count_limit(self) -> None:
        """At most MAX_PBX_ACCOUNTS blocks."""
        body = "\n".join(
            f'pbx_account "sip:h{n}" {{ username "u"; password "x"; }}'
            for n in range(MAX_PBX_ACCOUNTS + 1)
        )
        with self.assertRaises(ConfigError) as caught:
            parse_cig_config(sip(body))
        self.assertIn("too many pbx_account blocks", str(caught.exception))


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[a-z][a-z0-9\-]{0,8}(\.[a-z]{2,4})?", fullmatch=True),
)
printable = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"),
    min_size=1,
    max_size=40,
).filter(str.isprintable)


@st.composite
def accounts(draw: st.DrawFn) -> PbxAccount:
    host = draw(hosts)
    port = draw(st.none() | st.integers(1, 65535))
    server = f"sip:{host}" + (f":{port}" if port else "")
    server += draw(st.sampled_from(["", ";transport=tcp", ";transport=udp"]))
    in_file = draw(st.booleans())
    return PbxAccount(
        server,
        draw(printable),
        password=None if in_file else draw(printable),
        password_file=draw(printable) if in_file else None,
        register=draw(st.none() | st.integers(10, 86400)),
        aor=draw(st.none() | st.just(f"sip:cig@{host}")),
    )


class RoundTripTests(SynchronousTestCase):
    """Written back, a configuration with accounts reads the same."""

    @given(st.lists(accounts(), max_size=3, unique_by=lambda a: a.server))
    def test_round_trip(self, found: list[PbxAccount]) -> None:
        """render_cig_config, then parse: equal accounts."""
        cfg = CigConfig(interfaces=Interfaces(sip=SipInterface(pbx_accounts=tuple(found))))
        self.assertEqual(parse_cig_config(render_cig_config(cfg)), cfg)

    @given(st.text(max_size=80))
    def test_hostile_block(self, inside: str) -> None:
        """Anything inside a pbx_account block is read or refused with ConfigError."""
        try:
            parse_cig_config(sip('pbx_account "sip:a" { ' + inside + " }"))
        except ConfigError:
            pass

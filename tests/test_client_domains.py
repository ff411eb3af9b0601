"""Other security domains: the domain file (cryptify-kms export), and the
client keying calls and sealing messages with another domain's parameters,
verifying the other domain's users with its KPAK (docs/interworking.md)."""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client import calls, cli
from cryptify.client.calls import CallAgent, CallError, CallEvent
from cryptify.client.messages import MessageCrypto, Messenger
from cryptify.client.session import Answered, Incoming
from cryptify.crypto.domains import (
    MAX_FILE,
    MAX_PERIODS,
    DomainFileError,
    DomainPeriod,
    PeerDomain,
    by_account,
    load_domain,
)
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import KeyMaterial, write_key_material
from cryptify.kms.cli import run as kms_run
from cryptify.protocols.message_payload import MessageBody, PayloadError
from cryptify.protocols.umsg import message
from tests.fakes import attached, material

A, B = "tel:+461111", "tel:+462222"


def domain_of(keys: KeyMaterial) -> PeerDomain:
    """The public parameters of ``keys``' domain, as ``cryptify-kms export`` writes them."""
    return PeerDomain(
        keys.account, tuple(DomainPeriod(p.period, p.kpak, p.z) for p in keys.periods)
    )


def good_doc() -> dict[str, Any]:
    return json.loads(domain_of(material(B, "beta")).to_bytes())  # type: ignore[no-any-return]


class DomainFileTests(SynchronousTestCase):
    """The file: written by cryptify-kms export, read strictly."""

    def test_export(self) -> None:
        """export writes the account's KPAK and Z per period, and no secret."""
        store = os.path.abspath(self.mktemp())
        path = os.path.join(os.path.dirname(store), "beta.domain")
        out = io.StringIO()
        self.assertEqual(kms_run(["--store", store, "init", "beta"], out, out), 0)
        argv = ["--store", store, "export", "beta", "--period", "2026-12", "--next", "-o", path]
        self.assertEqual(kms_run(argv, out, out), 0, out.getvalue())
        domain = load_domain(path)
        self.assertEqual(domain.account, "beta")
        self.assertEqual([p.period for p in domain.periods], ["2026-12", "2027-01"])
        issue = ["--store", store, "issue", "beta", B, "--period", "2026-12"]
        keys = os.path.join(os.path.dirname(store), "b.keys")
        self.assertEqual(kms_run([*issue, "-o", keys], out, out), 0)
        with open(keys, "rb") as f:
            user = KeyMaterial.from_bytes(f.read()).periods[0]
        self.assertEqual((domain.periods[0].kpak, domain.periods[0].z), (user.kpak, user.z))
        with open(path) as f:
            text = f.read()
        for secret in ("ksak", "ssk", "rsk", "pvt", f"{user.ssk:064x}", user.rsk.hex()):
            self.assertNotIn(secret, text)

    def test_round_trip(self) -> None:
        domain = domain_of(material(B, "beta"))
        self.assertEqual(PeerDomain.from_bytes(domain.to_bytes()), domain)

    def test_refused(self) -> None:
        """Each malformed file is refused with a message saying what is wrong."""
        doc = good_doc()
        entry = doc["periods"][0]
        cases: list[tuple[Any, str]] = [
            (b"\xff", "JSON"),
            (b"[" * 60_000, "JSON"),
            (b" " * (MAX_FILE + 1), "at most"),
            ({**doc, "format": "x"}, "not a cryptify KMS domain"),
            ({**doc, "version": 2}, "version"),
            ({**doc, "account": "a b"}, "account id"),
            ({**doc, "account": 7}, "'account'"),
            ({**doc, "periods": []}, "1 to"),
            ({**doc, "periods": [entry] * (MAX_PERIODS + 1)}, "1 to"),
            ({**doc, "periods": [entry, entry]}, "twice"),
            ({**doc, "periods": ["x"]}, "not an object"),
            ({**doc, "periods": [{**entry, "extra": 1}]}, "exactly"),
            ({**doc, "periods": [{**entry, "period": "2026-13"}]}, "YYYY-MM"),
            ({**doc, "periods": [{**entry, "kpak": "zz"}]}, "KPAK"),
            ({**doc, "periods": [{**entry, "kpak": "04" + "00" * 64}]}, "KPAK"),
            ({**doc, "periods": [{**entry, "z": entry["z"][:-2] + "00"}]}, "Z"),
        ]
        for given_, text in cases:
            data = given_ if isinstance(given_, bytes) else json.dumps(given_).encode()
            with self.assertRaises(DomainFileError, msg=text) as caught:
                PeerDomain.from_bytes(data)
            self.assertIn(text, str(caught.exception))

    def test_load(self) -> None:
        """A missing file names itself; an invalid one too."""
        with self.assertRaises(DomainFileError) as caught:
            load_domain("/nonexistent/x.domain")
        self.assertIn("/nonexistent/x.domain", str(caught.exception))

    def test_by_account(self) -> None:
        """Twice the same domain, or our own: refused."""
        beta = domain_of(material(B, "beta"))
        self.assertEqual(by_account([beta], own="alpha"), {"beta": beta})
        self.assertRaises(DomainFileError, by_account, [beta, beta], "alpha")
        self.assertRaises(DomainFileError, by_account, [beta], "beta")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=2048))
    def test_any_octets(self, data: bytes) -> None:
        """Arbitrary octets: a domain or DomainFileError, nothing else."""
        try:
            PeerDomain.from_bytes(data)
        except DomainFileError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(["format", "version", "account", "periods", "period", "kpak", "z"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=10,
        ),
    )
    def test_any_field_value(self, name: str, value: object) -> None:
        """Any JSON value in any field: refused with DomainFileError (or, by chance, valid)."""
        doc = good_doc()
        if name in ("period", "kpak", "z"):
            doc["periods"][0][name] = value
        else:
            doc[name] = value
        try:
            PeerDomain.from_bytes(json.dumps(doc).encode())
        except DomainFileError as exc:
            self.assertTrue(str(exc))


class _Domains(SynchronousTestCase):
    """A in account alpha, B in account beta, each knowing the other's domain."""

    def setUp(self) -> None:
        self.ka, self.kb = material(A, "alpha"), material(B, "beta")
        self.sa, self.out_a = attached(A)
        self.sb, self.out_b = attached(B)
        self.a = CallAgent(self.ka, time.time, self.sa, domains={"beta": domain_of(self.kb)})
        self.b = CallAgent(self.kb, time.time, self.sb, domains={"alpha": domain_of(self.ka)})


class CallAcrossDomainsTests(_Domains):
    def offer(self, agent: CallAgent) -> list[CallEvent]:
        sent = self.out_a[-1]
        agent.handle(
            Answered(
                sent["id"],
                message(
                    "session", id=sent["id"], session="s1",
                    **{"relay-host": "h", "relay-port": 1, "relay-tag": b"A" * 8},
                ),
            )
        )  # fmt: skip
        return self.b.handle(
            Incoming(
                message(
                    "invite", session="s1", to=B, mikey=sent["mikey"],
                    **{"from": A, "relay-host": "h", "relay-port": 1, "relay-tag": b"B" * 8},
                )
            )
        )  # fmt: skip

    def test_call(self) -> None:
        """Keyed with beta's Z, verified with alpha's KPAK: both derive one key."""
        call = self.a.place(B, "beta")
        self.assertEqual((self.out_a[-1]["to-account"], call.account), ("beta", "beta"))
        got = self.offer(self.a)
        self.assertEqual([e.kind for e in got], [calls.INCOMING])
        self.assertEqual(got[0].call.account, "alpha")
        self.assertEqual(got[0].call.policy_key, call.policy_key)

    def test_callee_without_the_callers_domain(self) -> None:
        """The callee does not know alpha: no KPAK verifies, bad-keys."""
        self.b.domains.clear()
        self.a.place(B, "beta")
        got = self.offer(self.a)
        self.assertEqual((got[0].kind, got[0].call.code), (calls.END, "bad-keys"))

    def test_unknown_domain(self) -> None:
        """Calling into a domain we have no parameters of: CallError, nothing sent."""
        before = len(self.out_a)
        with self.assertRaises(CallError) as caught:
            self.a.place(B, "gamma")
        self.assertIn("gamma", str(caught.exception))
        self.assertEqual(len(self.out_a), before)

    def test_own_domain(self) -> None:
        """to_account naming our own account keys the call with our Z."""
        self.a.domains.clear()
        self.a.place(B, "alpha")
        self.assertEqual(self.out_a[-1]["to-account"], "alpha")

    def test_keyed_for_the_wrong_domain(self) -> None:
        """Keyed with our own Z for a callee of beta: B cannot decapsulate it."""
        self.a.place(B)
        got = self.offer(self.a)
        self.assertEqual((got[0].kind, got[0].call.code), (calls.END, "bad-keys"))


class MessagesAcrossDomainsTests(_Domains):
    def setUp(self) -> None:
        super().setUp()
        self.ca = MessageCrypto(self.ka, domains={"beta": domain_of(self.kb)})
        self.cb = MessageCrypto(self.kb, domains={"alpha": domain_of(self.ka)})

    def test_seal_and_open(self) -> None:
        content = self.ca.seal(B, MessageBody("hi", ()), time.time(), to_account="beta")
        opened, account = self.cb.open_from(content, A)
        self.assertEqual((opened.body.text, account), ("hi", "alpha"))

    def test_unknown_domain(self) -> None:
        with self.assertRaises(PayloadError) as caught:
            self.ca.seal(B, MessageBody("hi", ()), time.time(), to_account="gamma")
        self.assertIn("gamma", str(caught.exception))

    def test_recipient_without_the_senders_domain(self) -> None:
        content = self.ca.seal(B, MessageBody("hi", ()), time.time(), to_account="beta")
        self.cb.domains.clear()
        with self.assertRaises(PayloadError) as caught:
            self.cb.open(content, A)
        self.assertEqual(caught.exception.reason, "bad-signature")

    def test_received_names_the_domain(self) -> None:
        """The Messenger reports the sender's domain, and posts with to-account."""
        messenger = Messenger(self.sb, self.cb)
        content = self.ca.seal(B, MessageBody("hi", ()), time.time(), to_account="beta")
        got = messenger.handle(
            Incoming(message("message", message="m1", to=B, time=1, content=content, **{"from": A}))
        )
        self.assertEqual((got[0].account, got[0].opened.body.text), ("alpha", "hi"))  # type: ignore[union-attr]
        self.assertIn("from tel:+461111 (alpha): hi", cli.describe(got[0]))
        messenger.post(A, b"x", to_account="alpha")
        self.assertEqual(self.out_b[-1]["to-account"], "alpha")


class CommandLineTests(SynchronousTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.run(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def keys(self) -> str:
        path = self.mktemp()
        write_key_material(path, material(A, "alpha"))
        return path

    def test_bad_to_account(self) -> None:
        """--to-account must be an account id: exit 2."""
        status, _, err = self.run_cli(
            "call", B, "--keys", "k", "--server", "h:1", "--insecure", "--to-account", "a b"
        )
        self.assertEqual(status, 2)
        self.assertIn("account id", err)

    def test_bad_peer_domain(self) -> None:
        """An unusable --peer-domain file, or our own domain: exit 1 naming why."""
        bad = self.mktemp()
        with open(bad, "wb") as f:
            f.write(b"{}")
        own = self.mktemp()
        with open(own, "wb") as f:
            f.write(domain_of(material(A, "alpha")).to_bytes())
        for path, text in ((bad, "not a cryptify KMS domain"), (own, "our own")):
            status, _, err = self.run_cli(
                "send", B, "hi", "--keys", self.keys(), "--server", "h:1", "--insecure",
                "--peer-domain", path, "--to-account", "beta",
            )  # fmt: skip
            self.assertEqual(status, 1)
            self.assertIn(text, err)

    def test_period_missing(self) -> None:
        """A domain without this month's keys: a call into it cannot be keyed."""
        beta = domain_of(material(B, "beta"))
        old = PeerDomain(
            "beta", (DomainPeriod("2000-01", beta.periods[0].kpak, beta.periods[0].z),)
        )
        session, _ = attached(A)
        agent = CallAgent(material(A, "alpha"), time.time, session, domains={"beta": old})
        self.assertRaises(CallError, agent.place, B, "beta")
        self.assertNotEqual(period_of(time.time()), "2000-01")

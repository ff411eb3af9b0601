"""cryptify.protocols.message_payload: the end-to-end message payload.

Real key material from a KMS account made in the test (as
tests/test_client_calls.py does): A sends to B; C is another user of the
same account, and ``evil`` another account with its own KMS.  A payload
that was altered, sent on to someone else, signed with another key, or
taken in another key period is refused with its reason; the decoder
answers any octets with a PayloadError and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import sakke
from cryptify.crypto.identity import period_of, tel_identifier
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.kms.store import KmsAccount
from cryptify.protocols import cbor_subset
from cryptify.protocols import message_payload as mp
from cryptify.protocols.message_payload import (
    Attachment,
    MessageBody,
    PayloadError,
    open_payload,
    seal,
)
from cryptify.protocols.umsg import MAX_CONTENT, base_uri

A, B, C = "tel:+461111", "tel:+462222", "tel:+463333"
#: 2026-12-02 05:00 UTC; messages are sealed in key period 2026-12.
NOW = 1796187600
PERIOD = period_of(NOW)
NEXT_MONTH = NOW + 31 * 86400

_CACHE: dict[Any, Any] = {}


def material(uri: str, account: str = "acme") -> KeyMaterial:
    """Key material for ``uri`` in ``account`` for PERIOD and the next (one KMS per account)."""
    if account not in _CACHE:
        _CACHE[account] = KmsAccount.generate(account)
    if (uri, account) not in _CACHE:
        _CACHE[uri, account] = _CACHE[account].issue(uri, PERIOD, with_next=True)
    result: KeyMaterial = _CACHE[uri, account]
    return result


def signer(uri: str, account: str = "acme", period: str = PERIOD) -> Any:
    key = ("signer", uri, account, period)
    if key not in _CACHE:
        _CACHE[key] = material(uri, account).for_period(period).signer()
    return _CACHE[key]


def z(account: str = "acme", period: str = PERIOD) -> sakke.SakkePublicKey:
    key = ("z", account, period)
    if key not in _CACHE:
        _CACHE[key] = material(A, account).for_period(period).public_key()
    result: sakke.SakkePublicKey = _CACHE[key]
    return result


def keys_for(uri: str, account: str = "acme") -> mp.KeysForPeriod:
    """What a recipient passes as ``keys_for``: its KPAK and receiver per period held."""

    def lookup(period: str) -> tuple[bytes, sakke.SakkeReceiver] | None:
        held = {keys.period for keys in material(uri, account).periods}
        if period not in held:
            return None
        key = ("receiver", uri, account, period)
        if key not in _CACHE:
            keys = material(uri, account).for_period(period)
            _CACHE[key] = (keys.kpak, keys.receiver(z(account, period)))
        result: tuple[bytes, sakke.SakkeReceiver] = _CACHE[key]
        return result

    return lookup


def sealed(
    body: MessageBody | None = None, sender: str = A, recipient: str = B, now: float = NOW
) -> bytes:
    return seal(
        body or MessageBody("hello"),
        sender=sender,
        recipient=recipient,
        signer=signer(base_uri(sender), period=period_of(now)),
        z=z(period=period_of(now)),
        now=now,
    )


def forge(
    header: dict[str, Any], body: bytes, sender: str = A, period: str = PERIOD, to: str = B
) -> bytes:
    """A payload built by hand (the sender's own key signs it), for checks seal() never fails."""
    encapsulated, ssv = sakke.encapsulate(z(period=period), tel_identifier(to, period))
    header_octets = cbor_subset.encode({**header, "sakke": encapsulated})
    key, nonce = mp._derive(ssv)
    sealed_body = AESGCM(key).encrypt(nonce, body, header_octets)
    signed = cbor_subset.encode([header_octets, sealed_body, b""])[:-1]
    return signed + cbor_subset.encode(signer(sender, period=period).sign(signed))


def header(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"v": 1, "from": A, "to": B, "period": PERIOD, "time": NOW}
    fields.update(changes)
    return fields


BODY = cbor_subset.encode({"text": "hi", "attachments": []})


class _PayloadTestCase(SynchronousTestCase):
    def assertRefused(self, reason: str, content: bytes, **kwargs: Any) -> PayloadError:
        kwargs.setdefault("me", B)
        kwargs.setdefault("keys_for", keys_for(B))
        error = self.assertRaises(PayloadError, open_payload, content, **kwargs)
        self.assertEqual(error.reason, reason, error)
        return error


class RoundTripTests(_PayloadTestCase):
    def test_text_round_trip(self) -> None:
        """B opens what A sealed for it: text, sender, recipient, period and time."""
        opened = open_payload(sealed(), me=B, keys_for=keys_for(B), sender=A)
        self.assertEqual(opened.body, MessageBody("hello"))
        self.assertEqual(
            (opened.sender, opened.recipient, opened.period, opened.time), (A, B, PERIOD, NOW)
        )

    def test_attachments_round_trip(self) -> None:
        """Attachments come back in order with name, media type and octets."""
        body = MessageBody(
            "see attached ✓",
            (
                Attachment("report.pdf", "application/pdf", bytes(range(256)) * 4),
                Attachment("ångström.txt", "text/plain", b""),
            ),
        )
        opened = open_payload(sealed(body), me=B, keys_for=keys_for(B))
        self.assertEqual(opened.body, body)

    def test_extension_kept(self) -> None:
        """A message to B's extension opens for B and keeps the extension in both URIs."""
        content = sealed(sender=A + ";7", recipient=B + ";101")
        opened = open_payload(content, me=B, keys_for=keys_for(B), sender=A + ";7")
        self.assertEqual((opened.sender, opened.recipient), (A + ";7", B + ";101"))

    def test_fresh_key_each_message(self) -> None:
        """The same message sealed twice carries two different message keys."""
        first = cbor_subset.decode(cbor_subset.decode(sealed())[0])["sakke"]
        second = cbor_subset.decode(cbor_subset.decode(sealed())[0])["sakke"]
        self.assertNotEqual(first, second)

    def test_fingerprint(self) -> None:
        """Copies of one payload share a fingerprint; two seals of the same body do not."""
        content = sealed()
        first = open_payload(content, me=B, keys_for=keys_for(B)).fingerprint
        again = open_payload(content, me=B, keys_for=keys_for(B)).fingerprint
        other = open_payload(sealed(), me=B, keys_for=keys_for(B)).fingerprint
        self.assertEqual((len(first), first), (32, again))
        self.assertNotEqual(first, other)

    def test_largest_fits(self) -> None:
        """A body just under the limit seals into at most MAX_CONTENT octets and opens."""
        body = MessageBody("", (Attachment("a.bin", "application/octet-stream", bytes(47000)),))
        content = sealed(body)
        self.assertLessEqual(len(content), MAX_CONTENT)
        self.assertEqual(open_payload(content, me=B, keys_for=keys_for(B)).body, body)

    def test_too_large_to_seal(self) -> None:
        """A body that would not fit in a post is refused when sealing."""
        body = MessageBody("", (Attachment("a.bin", "application/octet-stream", bytes(49000)),))
        error = self.assertRaises(PayloadError, sealed, body)
        self.assertEqual(error.reason, "too-large")

    def test_too_large_to_open(self) -> None:
        """Content over MAX_CONTENT is refused before it is parsed."""
        self.assertRefused("too-large", bytes(MAX_CONTENT + 1))

    def test_bad_attachment_names(self) -> None:
        """An attachment name with a path, a control character or no octets is refused."""
        for name in ("../etc/passwd", "a/b", "a\\b", "..", "", "a\nb", "x" * 256):
            error = self.assertRaises(PayloadError, Attachment, name, "text/plain", b"")
            self.assertEqual(error.reason, "malformed")
        self.assertRaises(PayloadError, Attachment, "a", "text", b"")
        self.assertRaises(PayloadError, Attachment, "a", "text/plain", 5)
        self.assertRaises(PayloadError, MessageBody, b"not text")

    def test_too_many_attachments(self) -> None:
        """More than MAX_ATTACHMENTS attachments is refused."""
        one = Attachment("a", "text/plain", b"")
        error = self.assertRaises(PayloadError, MessageBody, "", (one,) * (mp.MAX_ATTACHMENTS + 1))
        self.assertEqual(error.reason, "too-large")

    def test_time_out_of_range(self) -> None:
        """seal() refuses a clock before 1970 or past 9999 instead of failing inside."""
        for now in (-1, mp.MAX_TIME + 1, 1e30):
            error = self.assertRaises(
                PayloadError,
                seal,
                MessageBody("x"),
                sender=A,
                recipient=B,
                signer=signer(A),
                z=z(),
                now=now,
            )
            self.assertEqual(error.reason, "malformed")

    def test_surrogate_text(self) -> None:
        """seal() refuses text that is not UTF-8 (a lone surrogate) with a PayloadError."""
        error = self.assertRaises(PayloadError, sealed, MessageBody("\udc80"))
        self.assertEqual(error.reason, "malformed")

    def test_documented_reasons(self) -> None:
        """docs/messages.md names every reason a payload can be refused with."""
        doc = (Path(__file__).parent.parent / "docs" / "messages.md").read_text("utf-8")
        for reason in mp.REASONS:
            self.assertIn(f"`{reason}`", doc)

    def test_signer_must_be_sender(self) -> None:
        """seal() refuses a signing key that is not the sender's."""
        error = self.assertRaises(
            PayloadError,
            seal,
            MessageBody("x"),
            sender=A,
            recipient=B,
            signer=signer(C),
            z=z(),
            now=NOW,
        )
        self.assertEqual(error.reason, "malformed")


class RefusalTests(_PayloadTestCase):
    def test_every_byte_flipped(self) -> None:
        """Flipping any one bit of any octet gets the payload refused, never opened."""
        content = sealed(MessageBody("x"))
        for index in range(len(content)):
            for bit in (0x01, 0x80):
                altered = bytearray(content)
                altered[index] ^= bit
                with self.subTest(index=index, bit=bit):
                    self.assertRaises(
                        PayloadError, open_payload, bytes(altered), me=B, keys_for=keys_for(B)
                    )

    def test_altered_body_is_bad_signature(self) -> None:
        """A changed octet of the sealed body is caught by the signature."""
        content = bytearray(sealed())
        content[-mp.SIGNATURE_ITEM_OCTETS - 1] ^= 1
        self.assertRefused("bad-signature", bytes(content))

    def test_truncated(self) -> None:
        """Every proper prefix of a payload is refused as malformed."""
        content = sealed(MessageBody(""))
        for end in range(len(content)):
            self.assertRefused("malformed", content[:end])

    def test_replayed_to_another_recipient(self) -> None:
        """A payload for B handed to C is refused as mis-addressed."""
        self.assertRefused("mis-addressed", sealed(), me=C, keys_for=keys_for(C))

    def test_wrong_recipient_keys(self) -> None:
        """The message key does not decapsulate with another identity's receiver."""
        self.assertRefused("undecryptable", sealed(), me=B, keys_for=keys_for(C))

    def test_signed_by_another_user(self) -> None:
        """A payload that says it is from A but is signed with C's key is refused."""
        head, body, _ = cbor_subset.decode(sealed())
        signed = cbor_subset.encode([head, body, b""])[:-1]
        forged = signed + cbor_subset.encode(signer(C).sign(signed))
        self.assertRefused("bad-signature", forged)

    def test_signed_in_another_domain(self) -> None:
        """A's identity with keys from another KMS does not verify under B's KPAK."""
        head, body, _ = cbor_subset.decode(sealed())
        signed = cbor_subset.encode([head, body, b""])[:-1]
        forged = signed + cbor_subset.encode(signer(A, account="evil").sign(signed))
        self.assertRefused("bad-signature", forged)

    def test_sender_mismatch(self) -> None:
        """When the CRS says the message came from C, a payload signed as A is refused."""
        self.assertRefused("sender-mismatch", sealed(), sender=C)

    def test_period_without_keys(self) -> None:
        """A payload of a key period the recipient holds no keys for is refused."""
        content = sealed(now=NEXT_MONTH)

        def only_current(period: str) -> Any:
            return keys_for(B)(period) if period == PERIOD else None

        self.assertRefused("wrong-period", content, keys_for=only_current)
        # and with the next period's keys it opens:
        self.assertEqual(open_payload(content, me=B, keys_for=keys_for(B)).period, NEXT_MONTH_P)

    def test_keys_lookup_fails(self) -> None:
        """A keys_for that fails with a CryptoError (no such period in the file) is wrong-period."""

        def failing(period: str) -> Any:
            return material(B).for_period("1999-01")

        self.assertRefused("wrong-period", sealed(), keys_for=failing)

    def test_period_not_month_of_time(self) -> None:
        """A header whose period is not the month of its time is refused."""
        self.assertRefused("wrong-period", forge(header(time=NEXT_MONTH), BODY))

    def test_forged_header_opens_when_consistent(self) -> None:
        """The hand-built payload opens when nothing is wrong (so the refusals below are real)."""
        self.assertEqual(
            open_payload(forge(header(), BODY), me=B, keys_for=keys_for(B)).body.text, "hi"
        )

    def test_other_version(self) -> None:
        """A format version other than 1 is refused as such."""
        self.assertRefused("version", forge(header(v=2), BODY))

    def test_header_shape(self) -> None:
        """Missing, extra or reordered header fields are malformed."""
        fields = header()
        del fields["time"]
        self.assertRefused("malformed", forge(fields, BODY))
        self.assertRefused("malformed", forge({**header(), "extra": 1}, BODY))
        reordered = {"v": 1, "to": B, "from": A, "period": PERIOD, "time": NOW}
        self.assertRefused("malformed", forge(reordered, BODY))
        self.assertRefused("malformed", forge(header(**{"from": "sip:a@b"}), BODY))

    def test_body_shape(self) -> None:
        """A body that verifies but is not the body map is malformed."""
        for body in (
            b"\xff",
            cbor_subset.encode({"text": 1, "attachments": []}),
            cbor_subset.encode({"attachments": [], "text": ""}),
            cbor_subset.encode(
                {"text": "", "attachments": [{"name": "../x", "type": "a/b", "data": b""}]}
            ),
        ):
            self.assertRefused("malformed", forge(header(), body))


NEXT_MONTH_P = period_of(NEXT_MONTH)

_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


class DecoderPropertyTests(SynchronousTestCase):
    def _only_payload_error(self, data: bytes) -> None:
        try:
            open_payload(data, me=B, keys_for=keys_for(B))
        except PayloadError as e:
            self.assertIn(e.reason, mp.REASONS)
        else:
            self.fail("opened octets that were not a sealed payload")

    @settings(max_examples=300)
    @given(st.binary(max_size=2048))
    def test_random_octets(self, data: bytes) -> None:
        """Random octets are refused with a PayloadError, never another exception."""
        self._only_payload_error(data)

    @settings(max_examples=300)
    @given(_cbor_values)
    def test_random_cbor(self, value: Any) -> None:
        """Well-formed CBOR of any shape is refused with a PayloadError."""
        try:
            data = cbor_subset.encode(value)
        except cbor_subset.CborError:
            return
        self._only_payload_error(data)

    @settings(max_examples=300)
    @given(st.data())
    def test_mutated_payload(self, data: st.DataObject) -> None:
        """A real payload with octets replaced, inserted or removed is refused."""
        content = bytearray(_payload())
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(content) - 1))
            action = data.draw(st.sampled_from(("replace", "insert", "delete")))
            if action == "replace":
                new = data.draw(st.integers(0, 255).filter(lambda b, old=content[index]: b != old))
                content[index] = new
            elif action == "insert":
                content.insert(index, data.draw(st.integers(0, 255)))
            else:
                del content[index]
        assume(bytes(content) != _payload())  # later steps may undo earlier ones
        self._only_payload_error(bytes(content))

    @given(
        st.text(max_size=50),
        st.lists(
            st.builds(
                Attachment,
                st.text(
                    st.characters(
                        blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")
                    ),
                    min_size=1,
                    max_size=20,
                ).filter(lambda n: n not in (".", "..") and "/" not in n and "\\" not in n),
                st.sampled_from(("text/plain", "image/png", "application/vnd.x+json")),
                st.binary(max_size=64),
            ),
            max_size=3,
        ),
    )
    def test_body_round_trip(self, text: str, attachments: list[Attachment]) -> None:
        """Any body encodes and parses back to itself."""
        body = MessageBody(text, tuple(attachments))
        self.assertEqual(mp._parse_body(mp._encode_body(body)), body)


def _payload() -> bytes:
    if "payload" not in _CACHE:
        _CACHE["payload"] = sealed(MessageBody("hi", (Attachment("a.txt", "text/plain", b"abc"),)))
    result: bytes = _CACHE["payload"]
    return result

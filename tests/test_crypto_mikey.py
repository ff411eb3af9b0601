"""Tests for L{cryptify.crypto.mikey} and its payload codec."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.crypto import eccsi, mikey, sakke
from cryptify.crypto import mikey_payloads as mp
from cryptify.crypto.errors import (
    CryptoError,
    IdentityError,
    MikeyError,
    ReplayError,
    SignatureInvalid,
)
from cryptify.crypto.identity import (
    ID_SCHEME_UID,
    KeyPeriods,
    mikey_sakke_uid,
    split_tel_identifier,
)
from cryptify.crypto.replay import ReplayGuard
from tests.fixtures.crypto import ALICE, DOMAIN, NOW, fixture, h

MCX = fixture("mcx-streamwide.json")


SAMPLE = DOMAIN.build()


class StreamwideInteropTests(SynchronousTestCase):
    """The four published TS 33.180 I_MESSAGEs verify and give the published key."""

    def setUp(self) -> None:
        self.z = sakke.SakkePublicKey.from_bytes(h(MCX["kms"]["PubEncKey_Z"]))
        self.kpak = h(MCX["kms"]["PubAuthKey_KPAK"])

    def test_uids(self) -> None:
        """Each user's UID is the TS 33.180 F.2.1 hash of URI, KMS URI and period."""
        kms = MCX["kms"]
        periods = KeyPeriods(int(kms["UserKeyPeriod"]), int(kms["UserKeyOffset"]))
        for uri, user in MCX["users"].items():
            uid = mikey_sakke_uid(uri, kms["KmsUri"], periods, int(user["KeyPeriodNo"]))
            self.assertEqual(uid.hex(), user["UserID"])

    def test_messages(self) -> None:
        """Verify with the initiator UID, decapsulate with the responder RSK: the key."""
        for case in MCX["imessages"]:
            raw = base64.b64decode(case["imessage_b64"])
            user = MCX["users"][case["responder"]]
            uid = h(user["UserID"])
            receiver = sakke.SakkeReceiver(self.z, uid, h(user["UserDecryptKey"]))
            message = mp.parse_message(raw)
            when = message.find(mp.Timestamp)[0].unix_seconds()  # type: ignore[union-attr]
            got = mikey.receive_i_message(raw, kpak=self.kpak, receiver=receiver, now=when)
            self.assertEqual(got.ssv.hex(), case["key"], case["title"])
            self.assertEqual(got.initiator_id.hex(), MCX["users"][case["initiator"]]["UserID"])
            self.assertTrue(got.signed_with_header)
            self.assertEqual(got.rand.hex(), case["rand"])

    def test_reencode(self) -> None:
        """Parsing and re-encoding each message gives back the same octets."""
        for case in MCX["imessages"]:
            raw = base64.b64decode(case["imessage_b64"])
            m = mp.parse_message(raw)
            assert m.sign is not None
            again = mp.encode_message(m.header, m.payloads, sign_type=m.sign.s_type)
            again += mp.sign_header(m.sign.s_type, len(m.sign.signature)) + m.sign.signature
            self.assertEqual(again, raw)

    def test_signature_excludes_nothing(self) -> None:
        """They sign the SIGN header too: the form without it does not verify."""
        case = MCX["imessages"][0]
        m = mp.parse_message(base64.b64decode(case["imessage_b64"]))
        uid = h(MCX["users"][case["initiator"]]["UserID"])
        assert m.sign is not None
        self.assertRaises(
            SignatureInvalid,
            eccsi.verify,
            self.kpak,
            uid,
            m.signed_data(include_sign_header=False),
            m.sign.signature,
        )


class BuildReceiveTests(SynchronousTestCase):
    """I_MESSAGEs built here are received, under both identifier schemes."""

    def test_round_trip_scheme_1(self) -> None:
        """Responder recovers the SSV; identities come from IDRi/IDRr and T's month."""
        got = DOMAIN.receive(SAMPLE.data)
        self.assertEqual(got.ssv, SAMPLE.ssv)
        self.assertEqual(split_tel_identifier(got.initiator_id), ("2025-10", ALICE))
        self.assertEqual(got.responder_id, DOMAIN.bob_id)

    def test_round_trip_scheme_2(self) -> None:
        """With UIDs (ID scheme 2) in IDR roles 8/9 the message round trips."""
        periods = KeyPeriods()
        number = periods.number(NOW)
        a_uid = mikey_sakke_uid("sip:a@example.org", "kms.example.org", periods, number)
        b_uid = mikey_sakke_uid("sip:b@example.org", "kms.example.org", periods, number)
        ssk, pvt = DOMAIN.eccsi.issue(a_uid)
        signer = eccsi.EccsiSigner(DOMAIN.kpak, a_uid, ssk, pvt)
        receiver = sakke.SakkeReceiver(DOMAIN.z, b_uid, DOMAIN.sakke.issue_rsk(b_uid))
        built = mikey.build_i_message(
            signer,
            DOMAIN.z,
            b_uid,
            now=NOW,
            id_scheme=ID_SCHEME_UID,
            idrs=mikey.uid_idrs(a_uid, b_uid, "kms.example.org"),
            map_type=mp.MAP_GENERIC_ID,
            entries=[mp.GenericIdEntry(cs_id=4, policies=(0,), spi=b"\x01\x02\x03\x04")],
        )
        got = mikey.receive_i_message(built.data, kpak=DOMAIN.kpak, receiver=receiver, now=NOW)
        self.assertEqual(got.ssv, built.ssv)
        self.assertEqual(got.initiator_id, a_uid)
        self.assertEqual(got.message.header.cs_ids(), [4])

    def test_receiver_lookup(self) -> None:
        """A function from the named responder identifier picks the RSK."""
        seen = []

        def lookup(identifier: bytes) -> sakke.SakkeReceiver:
            seen.append(identifier)
            return DOMAIN.bob

        got = mikey.receive_i_message(SAMPLE.data, kpak=DOMAIN.kpak, receiver=lookup, now=NOW)
        self.assertEqual((got.ssv, seen), (SAMPLE.ssv, [DOMAIN.bob_id]))

    def test_addressed_elsewhere(self) -> None:
        """A message whose IDRr names someone else is refused."""
        built = DOMAIN.build(idrs=mikey.tel_idrs(ALICE, "tel:+4611"))
        self.assertRaises(IdentityError, DOMAIN.receive, built.data)

    def test_month_mismatch(self) -> None:
        """T in another month than the identifiers' is refused."""
        built = mikey.build_i_message(DOMAIN.alice, DOMAIN.z, DOMAIN.bob_id, now=NOW + 40 * 86400)
        self.assertRaises(
            CryptoError,
            mikey.receive_i_message,
            built.data,
            kpak=DOMAIN.kpak,
            receiver=DOMAIN.bob,
            now=NOW,
            initiator_id=DOMAIN.alice_id,
        )

    def test_explicit_initiator(self) -> None:
        """Without IDR payloads the caller supplies the initiator identifier."""
        built = DOMAIN.build(idrs=())
        self.assertRaises(IdentityError, DOMAIN.receive, built.data)
        got = DOMAIN.receive(built.data, initiator_id=DOMAIN.alice_id)
        self.assertEqual(got.ssv, built.ssv)

    def test_other_kpak(self) -> None:
        """Verification under another KMS's KPAK fails."""
        self.assertRaises(
            SignatureInvalid,
            mikey.receive_i_message,
            SAMPLE.data,
            kpak=eccsi.EccsiKms(99).kpak,
            receiver=DOMAIN.bob,
            now=NOW,
        )

    def test_sign_compat(self) -> None:
        """A message signed without the SIGN header is refused unless compat is on."""
        built = DOMAIN.build(sign_compat=True)
        self.assertRaises(SignatureInvalid, DOMAIN.receive, built.data)
        got = DOMAIN.receive(built.data, sign_compat=True)
        self.assertEqual(got.ssv, built.ssv)
        self.assertFalse(got.signed_with_header)

    def test_not_signed(self) -> None:
        """A message without SIGN is refused."""
        body = mp.encode_message(mp.parse_message(SAMPLE.data).header, [mp.Rand(b"x" * 16)])
        self.assertRaises(MikeyError, DOMAIN.receive, body)

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def test_any_byte_tampered(self, data: st.DataObject) -> None:
        """Altering any octet of an I_MESSAGE makes it refused with a CryptoError."""
        index = data.draw(st.integers(0, len(SAMPLE.data) - 1))
        delta = data.draw(st.integers(1, 255))
        bad = bytearray(SAMPLE.data)
        bad[index] = (bad[index] + delta) % 256
        self.assertRaises(CryptoError, DOMAIN.receive, bytes(bad))


class ReplayTests(SynchronousTestCase):
    """T outside the window, or a repeated RAND within it, is refused."""

    def test_replayed(self) -> None:
        """The same message twice: the second is a replay."""
        guard = ReplayGuard(window=60)
        DOMAIN.receive(SAMPLE.data, replay=guard)
        self.assertRaises(ReplayError, DOMAIN.receive, SAMPLE.data, replay=guard)

    def test_outside_window(self) -> None:
        """A message stamped outside the window is refused."""
        guard = ReplayGuard(window=60)
        self.assertRaises(
            ReplayError,
            mikey.receive_i_message,
            SAMPLE.data,
            kpak=DOMAIN.kpak,
            receiver=DOMAIN.bob,
            now=NOW + 61,
            replay=guard,
        )

    def test_forgotten_after_window(self) -> None:
        """RANDs are pruned after twice the window; the window check still refuses."""
        guard = ReplayGuard(window=60)
        guard.check(NOW, b"r" * 16, NOW)
        self.assertRaises(ReplayError, guard.check, NOW, b"r" * 16, NOW + 30)
        guard.check(NOW + 200, b"s" * 16, NOW + 200)
        self.assertEqual(list(guard._seen), [b"s" * 16])


_payloads = st.one_of(
    st.builds(mp.Timestamp, st.sampled_from([0, 1]), st.binary(min_size=8, max_size=8)),
    st.builds(mp.Timestamp, st.just(2), st.binary(min_size=4, max_size=4)),
    st.builds(mp.Rand, st.binary(max_size=255)),
    st.builds(mp.IdR, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300)),
    st.builds(
        mp.SecurityPolicy,
        st.integers(0, 255),
        st.integers(0, 255),
        st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=5).map(tuple),
    ),
    st.builds(mp.SakkePayload, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300)),
    st.builds(mp.GeneralExtension, st.integers(0, 255), st.binary(max_size=100)),
)
_entries = st.one_of(
    st.lists(
        st.builds(
            mp.SrtpIdEntry,
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
        ),
        max_size=3,
    ).map(lambda e: (mp.MAP_SRTP_ID, tuple(e))),
    st.lists(
        st.builds(
            mp.GenericIdEntry,
            st.integers(0, 255),
            st.integers(0, 255),
            st.booleans(),
            st.lists(st.integers(0, 255), max_size=4).map(tuple),
            st.binary(max_size=10),
            st.binary(max_size=10),
        ),
        max_size=3,
    ).map(lambda e: (mp.MAP_GENERIC_ID, tuple(e))),
    st.just((mp.MAP_EMPTY, ())),
)


class CodecTests(SynchronousTestCase):
    """The payload codec round trips and refuses malformations with MikeyError."""

    @settings(max_examples=150, deadline=None)
    @given(
        st.integers(0, 2**32 - 1),
        _entries,
        st.lists(_payloads, max_size=8),
        st.one_of(st.none(), st.binary(max_size=200)),
    )
    def test_round_trip(
        self,
        csb_id: int,
        entries: tuple[int, tuple[mp.MapEntry, ...]],
        payloads: list[mp.Payload],
        signature: bytes | None,
    ) -> None:
        """encode then parse gives the same header, payloads and signature."""
        header = mp.Header(csb_id=csb_id, map_type=entries[0], entries=entries[1])
        data = mp.encode_message(header, payloads, sign_type=None if signature is None else 2)
        if signature is not None:
            data += mp.sign_header(2, len(signature)) + signature
        parsed = mp.parse_message(data)
        self.assertEqual(parsed.header, header)
        self.assertEqual(list(parsed.payloads), payloads)
        if signature is None:
            self.assertIsNone(parsed.sign)
        else:
            self.assertEqual(parsed.sign, mp.SignPayload(2, signature))
            self.assertEqual(parsed.signed_length, len(data) - len(signature))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=400))
    def test_random_octets(self, data: bytes) -> None:
        """Random octets either parse or raise MikeyError."""
        try:
            mp.parse_message(data)
        except MikeyError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_mutated_message(self, data: st.DataObject) -> None:
        """Truncated or mutated real messages either parse or raise MikeyError."""
        raw = bytearray(base64.b64decode(MCX["imessages"][0]["imessage_b64"]))
        cut = data.draw(st.integers(0, len(raw)))
        raw = raw[:cut]
        for _ in range(data.draw(st.integers(0, 3))):
            if raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        try:
            mp.parse_message(bytes(raw))
        except MikeyError:
            pass

    def test_unknown_payload(self) -> None:
        """An unknown payload type cannot be skipped: MikeyError names it."""
        raw = mp.encode_message(mp.Header(csb_id=1), [])
        raw = raw[:2] + bytes([99]) + raw[3:] + b"\x00\x00"
        with self.assertRaises(MikeyError) as e:
            mp.parse_message(raw)
        self.assertIn("99", str(e.exception))

    def test_known_optional_payload_skipped(self) -> None:
        """A CERT payload, which I_MESSAGE processing does not use, is kept and skipped."""
        cert = mp.OpaquePayload(mp.CERT, b"\x00\x00\x03abc")
        raw = mp.encode_message(mp.Header(csb_id=1), [cert, mp.Rand(b"x" * 16)])
        self.assertEqual(mp.parse_message(raw).payloads, (cert, mp.Rand(b"x" * 16)))

    def test_trailing_octets(self) -> None:
        """Octets after the last payload are refused."""
        self.assertRaises(MikeyError, mp.parse_message, SAMPLE.data + b"\x00")

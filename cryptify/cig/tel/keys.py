"""The CIG's keys for secure calls: verifying and decapsulating an invite's I_MESSAGE."""

from __future__ import annotations

import attrs

from cryptify.crypto import mikey
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.identity import period_of, split_tel_identifier
from cryptify.crypto.keymaterial import KeyMaterial, PeriodKeys
from cryptify.crypto.replay import ReplayGuard
from cryptify.crypto.sakke import SakkeReceiver
from cryptify.protocols.umsg import Message, base_uri


class BadKeys(Exception):
    """The invite's I_MESSAGE cannot be used."""


@attrs.define(eq=False)
class Decapsulator:
    """Verifies and decapsulates invites with the CIG's key material."""

    material: KeyMaterial = attrs.field(repr=False)
    replay: ReplayGuard = attrs.field(factory=lambda: ReplayGuard(window=300))
    _keys: dict[str, tuple[PeriodKeys, SakkeReceiver]] = attrs.field(factory=dict, repr=False)

    def _period(self, period: str) -> tuple[PeriodKeys, SakkeReceiver]:
        if period not in self._keys:
            keys = self.material.for_period(period)
            self._keys[period] = (keys, keys.receiver(keys.public_key()))
        return self._keys[period]

    def _receiver(self, identifier: bytes) -> SakkeReceiver:
        period, uri = split_tel_identifier(identifier)
        if uri != base_uri(self.material.uri):
            raise BadKeys("the I_MESSAGE is for someone else")
        return self._period(period)[1]

    def policy_key(self, msg: Message, now: float) -> bytes:
        """The SRTP policy key of an invite.

        @raise BadKeys: if the I_MESSAGE does not verify, is not for us, is
            a replay or is signed by someone other than C{from}.
        """
        try:
            keys = self._period(period_of(now))[0]
            got = mikey.receive_i_message(
                msg.octets("mikey"),
                kpak=keys.kpak,
                receiver=self._receiver,
                now=now,
                replay=self.replay,
            )
            _, initiator = split_tel_identifier(got.initiator_id)
        except CryptoError as exc:
            raise BadKeys(str(exc)) from exc
        if initiator != base_uri(msg.text("from")):
            raise BadKeys("the I_MESSAGE is signed by someone else")
        key: bytes = got.srtp().policy_key
        return key

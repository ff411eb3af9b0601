"""The frames of calls across pool instances (sans-IO): their types, their
fields, and :func:`decode_call`, which checks each field by field (a
missing or extra field, a wrong type, a value out of its UMSG limits
raises :class:`~cryptify.crs.pool.wire.WireError`).

What they do is :mod:`cryptify.crs.pool.calls_core`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TypeVar

import attrs

from cryptify.crs.calls.session import CALLEE, CALLER, CRS
from cryptify.crs.pool.wire import WireError
from cryptify.protocols.umsg import (
    ACCOUNT,
    Message,
    UmsgError,
    base_uri,
    encode_from_server,
    message,
)

INVITE_FRAME = "call-invite"
OFFERED_FRAME = "call-offered"
REFUSED_FRAME = "call-refused"
RINGING_FRAME = "call-ringing"
TALK_FRAME = "call-talk"
HANGUP_FRAME = "call-hangup"
HOLD_FRAME = "call-hold"
#: Every frame type of this module, for :meth:`PoolLink.handle`.
FRAME_TYPES = (
    INVITE_FRAME,
    OFFERED_FRAME,
    REFUSED_FRAME,
    RINGING_FRAME,
    TALK_FRAME,
    HANGUP_FRAME,
    HOLD_FRAME,
)
#: The codes a ``call-refused`` may carry (the caller's ``error`` code).
REFUSE_CODES = frozenset({"not-connected", "not-found", "busy", "glare"})

_SESSION_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
_ACCOUNT = re.compile(ACCOUNT)
_CODE = re.compile(r"[a-z-]{1,32}")
_WHO = frozenset({CALLER, CALLEE, CRS})
_MAX_REASON = 200
_T = TypeVar("_T")


# -- frames -------------------------------------------------------------------


@attrs.frozen
class CallInvite:
    """A forwarded invite: what the callee's instance sends its callee."""

    session: str
    shown: str
    to: str
    account: str
    mikey: bytes
    relay_host: str
    relay_port: int
    relay_tag: bytes

    @property
    def callee(self) -> str:
        return base_uri(self.to)

    def umsg(self) -> Message:
        """The ``invite`` the callee is sent."""
        return message(
            "invite",
            session=self.session,
            **{"from": self.shown},
            to=self.to,
            mikey=self.mikey,
            relay_host=self.relay_host,
            relay_port=self.relay_port,
            relay_tag=self.relay_tag,
        )

    def fields(self) -> dict[str, object]:
        return {
            "session": self.session,
            "from": self.shown,
            "to": self.to,
            "account": self.account,
            "mikey": self.mikey,
            "relay-host": self.relay_host,
            "relay-port": self.relay_port,
            "relay-tag": self.relay_tag,
        }


@attrs.frozen
class RelayLeg:
    """Where another relay takes a call's media: its address and the tag
    of the leg there (``call-offered`` on the inter-working link)."""

    host: str
    port: int
    tag: bytes


@attrs.frozen
class CallStep:
    """``call-offered``, ``call-ringing`` or ``call-talk``: a session id
    (an offer across operators may name the callee's relay leg)."""

    kind: str
    session: str
    relay: RelayLeg | None = None

    def fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"session": self.session}
        if self.relay is not None:
            fields.update(
                {
                    "relay-host": self.relay.host,
                    "relay-port": self.relay.port,
                    "relay-tag": self.relay.tag,
                }
            )
        return fields


@attrs.frozen
class CallRefused:
    """The callee's instance could not offer the call."""

    session: str
    code: str

    def fields(self) -> dict[str, object]:
        return {"session": self.session, "code": self.code}


@attrs.frozen
class CallHangup:
    """A call ended at the sender's side (``who`` as the UMSG hangup names it)."""

    session: str
    code: str
    reason: str | None
    who: str

    def fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"session": self.session, "code": self.code, "who": self.who}
        if self.reason is not None:
            fields["reason"] = self.reason
        return fields


@attrs.frozen
class CallHold:
    """A party put the call on hold (``held``) or resumed it."""

    session: str
    held: bool

    def fields(self) -> dict[str, object]:
        return {"session": self.session, "held": self.held}

    def umsg(self) -> Message:
        return message("hold" if self.held else "resume", session=self.session)


CallFrame = CallInvite | CallStep | CallRefused | CallHangup | CallHold


def _exact(fields: dict[str, object], what: str, required: set[str], optional: set[str]) -> None:
    keys = set(fields)
    missing = sorted(required - keys)
    extra = sorted(keys - required - optional)
    if missing or extra:
        raise WireError(f"{what} fields wrong (missing {missing}, unexpected {extra})")


def _session_id(value: object) -> str:
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise WireError("session is not a session id of 1 to 64 [0-9A-Za-z_.:-]")
    return value


def _code(value: object, what: str) -> str:
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        raise WireError(f"{what} is not a code of 1 to 32 [a-z-]")
    return value


def _typed(fields: dict[str, object], name: str, kind: type[_T]) -> _T:
    value = fields[name]
    if type(value) is not kind:
        raise WireError(f"{name} is not {kind.__name__}")
    assert isinstance(value, kind)
    return value


def _relay_leg(fields: dict[str, object]) -> RelayLeg:
    """The relay leg of an offer: an IP address (no name to resolve), a
    port, an 8-octet tag."""
    host = _typed(fields, "relay-host", str)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise WireError("relay-host is not an IP address") from None
    port = _typed(fields, "relay-port", int)
    if not 1 <= port <= 65535:
        raise WireError("relay-port is not a port")
    tag = _typed(fields, "relay-tag", bytes)
    if len(tag) != 8:
        raise WireError("relay-tag is not 8 octets")
    return RelayLeg(host, port, tag)


def decode_call(frame_type: str, fields: dict[str, object]) -> CallFrame:
    """The call frame of an envelope's type and fields; raises
    :class:`WireError` for anything a well-behaved peer does not send."""
    what = f"{frame_type} frame"
    if frame_type == INVITE_FRAME:
        keys = {"session", "from", "to", "account", "mikey", "relay-host", "relay-port"}
        _exact(fields, what, keys | {"relay-tag"}, set())
        account = fields["account"]
        if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
            raise WireError("account is not an account name")
        invite = CallInvite(
            _session_id(fields["session"]),
            _typed(fields, "from", str),
            _typed(fields, "to", str),
            account,
            _typed(fields, "mikey", bytes),
            _typed(fields, "relay-host", str),
            _typed(fields, "relay-port", int),
            _typed(fields, "relay-tag", bytes),
        )
        # the limits and patterns: those of the UMSG invite the callee gets
        try:
            encode_from_server(invite.umsg())
        except UmsgError as exc:
            raise WireError(f"{what}: {exc}") from None
        return invite
    if frame_type == OFFERED_FRAME:
        relay_keys = {"relay-host", "relay-port", "relay-tag"}
        _exact(fields, what, {"session"}, relay_keys)
        relay = None
        if relay_keys & set(fields):
            _exact(fields, what, {"session"} | relay_keys, set())
            relay = _relay_leg(fields)
        return CallStep(frame_type, _session_id(fields["session"]), relay)
    if frame_type in (RINGING_FRAME, TALK_FRAME):
        _exact(fields, what, {"session"}, set())
        return CallStep(frame_type, _session_id(fields["session"]))
    if frame_type == REFUSED_FRAME:
        _exact(fields, what, {"session", "code"}, set())
        code = _code(fields["code"], "code")
        if code not in REFUSE_CODES:
            raise WireError(f"code {code!r} is not one of {sorted(REFUSE_CODES)}")
        return CallRefused(_session_id(fields["session"]), code)
    if frame_type == HOLD_FRAME:
        _exact(fields, what, {"session", "held"}, set())
        return CallHold(_session_id(fields["session"]), _typed(fields, "held", bool))
    if frame_type == HANGUP_FRAME:
        _exact(fields, what, {"session", "code", "who"}, {"reason"})
        reason = fields.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > _MAX_REASON):
            raise WireError(f"reason is not a text of at most {_MAX_REASON} characters")
        who = fields["who"]
        if who not in _WHO:
            raise WireError("who is not caller, callee or crs")
        assert isinstance(who, str)
        return CallHangup(
            _session_id(fields["session"]), _code(fields["code"], "code"), reason, who
        )
    raise WireError(f"{frame_type!r} is not a call frame")


# -- the calls of one instance ---------------------------------------------------

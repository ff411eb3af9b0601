"""AMP commands the CIG server sends its ``cig-relay`` to bridge a call's media.

Sent on the same control connection as :class:`~cryptify.protocols.relay_control.Poll`
(the CIG server's ``RelayLink``: ``await relay.call(BridgeAdd, ...)``).
``docs/bridge.md`` describes every argument and answer.
"""

from __future__ import annotations

from twisted.protocols import amp

from cryptify.protocols.mgmt import JsonValue


class BridgeError(Exception):
    """The relay refused a bridge request; the message says why."""


_ERRORS: dict[type[Exception], bytes] = {BridgeError: b"BRIDGE_ERROR"}

#: SRTP on the PBX leg (SDES): the suite, our key and the PBX's.
_PBX_SRTP = [
    (b"pbx_srtp_profile", amp.Unicode(optional=True)),
    (b"pbx_srtp_tx_key", amp.String(optional=True)),
    (b"pbx_srtp_rx_key", amp.String(optional=True)),
]


#: The PBX leg's direction from our side (RFC 3264): sendrecv (the
#: default), recvonly (held by the PBX), sendonly (held by us), inactive.
_PBX_DIRECTION = (b"pbx_direction", amp.Unicode(optional=True))


class BridgeAdd(amp.Command):
    """Start bridging one call; answers the two local UDP ports.

    Secure side: the CRS relay's media address and our leg tag, the SRTP
    policy keys (master key || salt) for sending and receiving, codec and
    telephone-event payload type.  PBX side: the local port the SDP named
    (0: the relay picks one from ``rtp_port_range``), the PBX's media
    address (may come later with :class:`BridgeUpdate`), codec and
    telephone-event payload type; when the PBX leg is SRTP (SDES), its
    suite and two keys (master key || salt): ``pbx_srtp_tx_key`` ours, to
    protect what we send the PBX, ``pbx_srtp_rx_key`` the PBX's.  Key
    arguments are never logged.
    """

    arguments = [
        (b"call", amp.Unicode()),
        (b"relay_host", amp.Unicode()),
        (b"relay_port", amp.Integer()),
        (b"tag", amp.String()),
        (b"srtp_tx_key", amp.String()),
        (b"srtp_rx_key", amp.String()),
        (b"secure_codec", amp.Unicode(optional=True)),
        (b"secure_dtmf_pt", amp.Integer(optional=True)),
        (b"srtp_profile", amp.Unicode(optional=True)),
        (b"pbx_port", amp.Integer(optional=True)),
        (b"pbx_host", amp.Unicode(optional=True)),
        (b"pbx_remote_port", amp.Integer(optional=True)),
        (b"pbx_codec", amp.Unicode(optional=True)),
        (b"pbx_dtmf_pt", amp.Integer(optional=True)),
        *_PBX_SRTP,
        _PBX_DIRECTION,
    ]
    response = [(b"secure_port", amp.Integer()), (b"pbx_port", amp.Integer())]
    errors = _ERRORS


class BridgeUpdate(amp.Command):
    """Change a bridged call's PBX leg (its address, codec, DTMF type, SRTP or direction).

    The SRTP arguments go together: given, they replace the leg's keys
    (the same keys keep the leg's SRTP state); ``pbx_srtp_profile`` empty
    turns SRTP off; absent, SRTP stays as it was.
    """

    arguments = [
        (b"call", amp.Unicode()),
        (b"pbx_host", amp.Unicode(optional=True)),
        (b"pbx_remote_port", amp.Integer(optional=True)),
        (b"pbx_codec", amp.Unicode(optional=True)),
        (b"pbx_dtmf_pt", amp.Integer(optional=True)),
        *_PBX_SRTP,
        _PBX_DIRECTION,
    ]
    response = [(b"updated", amp.Boolean())]
    errors = _ERRORS


class BridgeRemove(amp.Command):
    """Stop bridging a call; answers whether it existed and its last counters."""

    arguments = [(b"call", amp.Unicode())]
    response = [(b"removed", amp.Boolean()), (b"stats", JsonValue())]


class BridgeStats(amp.Command):
    """Counters of one call (``call`` given) or of all calls, summed."""

    arguments = [(b"call", amp.Unicode(optional=True))]
    response = [(b"stats", JsonValue())]
    errors = _ERRORS

"""What the running CIG knows about itself, for ``status`` and ``show``."""

from __future__ import annotations

from collections.abc import Callable

import attrs

CONNECTED = "CONNECTED"
DISCONNECTED = "DISCONNECTED"


@attrs.define
class CigState:
    """Inputs of ``cig-cli status``; live values come from probes."""

    crs_address: str
    sip_bind: str
    relay_connected: Callable[[], bool] = lambda: False
    crs_connected: Callable[[], bool] = lambda: False
    public_id: str = "-"
    security_domain: str = "-"
    crypto_state: str = "NO KEYS"
    crypto_periods: tuple[str, ...] = ()
    #: (available, total) media crypto engines: the cig-relay processes that
    #: do the SRTP work, available while their control link is up.
    crypto_engines: Callable[[], tuple[int, int]] = lambda: (0, 1)
    #: (public ID, security domain, crypto state, crypto periods) from the UIF.
    umsg_info: Callable[[], tuple[str, str, str, tuple[str, ...]]] | None = None
    call_rows: Callable[[], list[list[str]]] = lambda: []
    umsg_rows: Callable[[], list[list[str]]] = lambda: []
    #: (PBX server, UP/DOWN/UNKNOWN) from the OPTIONS keep-alive.
    sip_peers: Callable[[], list[tuple[str, str]]] = lambda: []
    #: (C{REG} address of record, state) of each C{pbx_account} registration.
    sip_registrations: Callable[[], list[tuple[str, str]]] = lambda: []

    def status(self, version: str) -> dict[str, object]:
        """The status report as ordered sections of (label, value) pairs."""
        public_id, domain, crypto_state, periods = (
            self.umsg_info()
            if self.umsg_info is not None
            else (self.public_id, self.security_domain, self.crypto_state, self.crypto_periods)
        )
        umsg: list[tuple[str, str]] = [
            ("Public ID", public_id),
            ("Security Domain", domain),
            ("CRS Address", self.crs_address),
            ("Connection state", CONNECTED if self.crs_connected() else DISCONNECTED),
            ("Crypto state", crypto_state),
        ]
        for index, period in enumerate(periods, 1):
            umsg.append((f"Crypto period {index}", period))
        return {
            "title": f"Cryptify Interconnect Gateway v{version}",
            "sections": [
                [
                    "",
                    [
                        (
                            "Relay connection state",
                            CONNECTED if self.relay_connected() else DISCONNECTED,
                        ),
                        (
                            "Crypto engines available",
                            "{}/{}".format(*self.crypto_engines()),
                        ),
                    ],
                ],
                ["UMSG status:", umsg],
                [
                    "SIP status:",
                    [
                        ("SIP Bind address", self.sip_bind),
                        *((f"PBX {peer}", state) for peer, state in self.sip_peers()),
                        *self.sip_registrations(),
                    ],
                ],
            ],
        }

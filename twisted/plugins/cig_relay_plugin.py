"""twistd dropin: `twistd cig-relay` (Cryptify CIG media relay)."""

from twisted.application.service import ServiceMaker

cig_relay = ServiceMaker(
    "Cryptify CIG media relay",
    "cryptify.plugins.cig_relay",
    "Cryptify CIG media relay.",
    "cig-relay",
)

"""twistd dropin: `twistd crs-relay` (Cryptify CRS media relay)."""

from twisted.application.service import ServiceMaker

crs_relay = ServiceMaker(
    "Cryptify CRS media relay",
    "cryptify.plugins.crs_relay",
    "Cryptify CRS media relay.",
    "crs-relay",
)

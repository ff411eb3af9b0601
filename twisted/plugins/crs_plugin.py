"""twistd dropin: `twistd crs` (Cryptify rendezvous server (CRS))."""

from twisted.application.service import ServiceMaker

crs = ServiceMaker(
    "Cryptify rendezvous server (CRS)",
    "cryptify.plugins.crs",
    "Cryptify rendezvous server (CRS).",
    "crs",
)

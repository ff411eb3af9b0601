"""twistd dropin: `twistd cig` (Cryptify interconnect gateway (CIG))."""

from twisted.application.service import ServiceMaker

cig = ServiceMaker(
    "Cryptify interconnect gateway (CIG)",
    "cryptify.plugins.cig",
    "Cryptify interconnect gateway (CIG).",
    "cig",
)

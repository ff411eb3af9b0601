"""twistd dropin: `twistd cryptify-push` (Cryptify push server)."""

from twisted.application.service import ServiceMaker

cryptify_push = ServiceMaker(
    "Cryptify push server",
    "cryptify.plugins.push",
    "Cryptify push server: wakes CRS clients through APNs and FCM.",
    "cryptify-push",
)

"""``cryptify-push``: the push server and the HTTP/2 clients of APNs and FCM.

The CRS reuses the APNs client for direct APNs (``docs/push.md``).
"""

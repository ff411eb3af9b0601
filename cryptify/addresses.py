"""
Network addresses as the configuration and the wire give them.

L{is_wildcard} is the one test for "every address of this machine"
(C{0.0.0.0}, C{::}): a server bound there must advertise some other
address, and an SDP connection address of C{0.0.0.0} puts a stream on hold.
"""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=256)
def is_wildcard(host: str) -> bool:
    """Whether C{host} is the unspecified IPv4 or IPv6 address, in any spelling."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False

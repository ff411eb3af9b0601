"""What the running CRS knows about itself, for management and status."""

from __future__ import annotations

from collections.abc import Callable

import attrs

ACTIVE = "active"
INACTIVE = "inactive"


@attrs.define
class CrsState:
    """The instance name and how to learn each service's status.

    ``probes`` maps a service name (crs, crs_relay, redis_high, ...) to a
    function answering whether it is active right now; the order is the
    order ``show services`` prints.
    """

    name: str
    probes: dict[str, Callable[[], bool]] = attrs.field(factory=dict)

    def services(self) -> list[tuple[str, str]]:
        """(service, active|inactive) for every service, in order."""
        result = []
        for service_name, probe in self.probes.items():
            try:
                up = probe()
            except Exception:
                up = False
            result.append((service_name, ACTIVE if up else INACTIVE))
        return result

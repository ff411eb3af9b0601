"""What the running CRS knows about itself: the context of its operator views."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs

from cryptify.crs.accounts import AccountStore
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.slots import SlotMap
from cryptify.crs.trace import TraceHub

ACTIVE = "active"
INACTIVE = "inactive"
#: The module that handles client connections (``show system``, ``show account``).
ATTACH_MODULE = "app:attach"


@attrs.define
class CrsState:
    """The instance, its accounts, attachments and traces, and service probes.

    ``probes`` maps a service name (crs, crs_relay, redis_high, ...) to a
    function answering whether it is active right now; the order is the
    order ``show services`` prints.
    """

    name: str
    probes: dict[str, Callable[[], bool]] = attrs.field(factory=dict)
    accounts: AccountStore = attrs.field(factory=lambda: AccountStore(os.devnull))
    trace: TraceHub = attrs.field(factory=TraceHub)
    registry: AttachRegistry | None = None
    slots: SlotMap | None = None
    objects: Any = None
    relay: Any = None
    #: The live calls (a ``SessionTable``), once calls are wired in.
    sessions: Any = None
    #: Store-and-forward messaging (``show message``), once wired in.
    messaging: Any = None
    #: Per-account statistics (``stats``), a ``Statistics``, once wired in.
    stats: Any = None
    pid: int = attrs.field(factory=os.getpid)
    #: ``notify(unit, event)``: tells notify.sh about system events.
    notify: Callable[[str, str], None] = lambda unit, event: None

    def __attrs_post_init__(self) -> None:
        if self.registry is None:
            self.registry = AttachRegistry(self.name, self.trace.clock, self.trace)
        if self.slots is None:
            self.slots = SlotMap((self.name,), self.name)

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

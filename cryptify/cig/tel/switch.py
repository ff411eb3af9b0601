"""Which tel side a call uses: the UIF's :class:`~cryptify.cig.tel.core.UmsgTel` or the stub.

:class:`UifCalls` hands the UIF's events to a ``UmsgTel`` for its current
key material; :class:`TelSwitch` is the SIF's tel side, sending each new
call to that ``UmsgTel`` once there is one, else to the stand-in.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cryptify.client.connection import ConnectionEnded, Event
from cryptify.client.session import ClientSession, Disconnected
from cryptify.crypto.keymaterial import KeyMaterial

from ..calls import Call, CallTable, TelLeg, TelSide
from ..route import Router
from .bridge import BridgeLink
from .core import SipSide, UmsgTel
from .legs import umsg_age

log = Logger(namespace="cryptify.cig.tel")


class UifLike(Protocol):
    """What :class:`UifCalls` needs of the :class:`~cryptify.cig.tel.uif.Uif`."""

    material: KeyMaterial | None

    def session(self) -> ClientSession | None: ...


@attrs.define(eq=False)
class UifCalls:
    """
    The UIF's events to a :class:`UmsgTel` for its current key material
    (``Uif.on_call_event``): a new keystore starts a new one, and the
    connection ending ends every call.
    """

    clock: IReactorTime
    uif: UifLike
    sip: SipSide
    calls: CallTable
    router: Router
    bridge: BridgeLink
    tel: UmsgTel | None = None
    #: When the CIG started (the message descriptor's TIME counts from it).
    started: float = attrs.field()
    #: Takes the events that are the mailboxes' (``MailDesk.handle``) first.
    mail: Callable[[Event], bool] | None = None

    @started.default
    def _now(self) -> float:
        return self.clock.seconds()

    def umsg_rows(self) -> list[list[str]]:
        """``show umsg``: the calls, then, while attached, the message descriptor."""
        rows = self.tel.umsg_rows() if self.tel is not None else []
        session = self.uif.session()
        if session is not None and session.state == "attached":
            age = umsg_age(self.started, self.clock.seconds())
            rows.append(["ZERO", "ZERO", "ZERO", age, "umsg"])
        return rows

    def handle(self, event: Event) -> None:
        """One event of the UIF's client (the mailboxes' own go to them only)."""
        if self.mail is not None and self.mail(event):
            return
        if isinstance(event, (ConnectionEnded, Disconnected)):
            if self.tel is not None:
                self.tel.detached()
            return
        material = self.uif.material
        if material is None:
            return
        if self.tel is None or self.tel.material is not material:
            if self.tel is not None:
                self.tel.detached()
            self.tel = UmsgTel(
                material,
                self.clock,
                self.uif.session,
                self.sip,
                self.calls,
                self.router,
                self.bridge,
            )
        self.tel.handle(event)


@attrs.define(eq=False)
class TelSwitch:
    """
    The SIF's tel side: the UIF's :class:`UmsgTel` once it has one (key
    material and an event from the CRS), else the stand-in ``stub``
    (``--tel-stub``). A call is hung up on the side that placed it.
    """

    stub: TelSide
    uif_calls: UifCalls | None = None
    placed: weakref.WeakKeyDictionary[Call, TelSide] = attrs.field(
        factory=weakref.WeakKeyDictionary
    )

    def side(self) -> TelSide:
        """Where a new call goes."""
        tel = self.uif_calls.tel if self.uif_calls is not None else None
        return tel if tel is not None else self.stub

    def place_call(self, call: Call, leg: TelLeg) -> None:
        side = self.side()
        self.placed[call] = side
        side.place_call(call, leg)

    def hang_up(self, call: Call) -> None:
        side = self.placed.pop(call, None)
        if side is not None:
            side.hang_up(call)

    def media_changed(self, call: Call) -> None:
        (self.placed.get(call) or self.side()).media_changed(call)

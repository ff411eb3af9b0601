"""What the mailboxes' three sides share: limits, state, keys and the UIF session.

:class:`DeskBase` holds the state of :class:`~cryptify.cig.mail.wiring.MailDesk`
(the write side, which it is), :class:`~cryptify.cig.mail.readside.ReadSide`
(read mailboxes) and :class:`~cryptify.cig.mail.sipside.SipSide` (SIP
MESSAGE both ways), and the calls all three make: the message keys, and a
notify or a post on the UIF session.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from cryptify.client.messages import MessageCrypto
from cryptify.client.session import ClientSession
from cryptify.config.cig_model import Mailbox, Mailboxes, TranslateMap
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.protocols.umsg import Message

from ..route import Router
from .maildir import mail_group

#: Mode of a quarantine folder the CIG creates.
QUARANTINE_MODE = 0o2770
#: Suffix of the quarantine folder beside a mailbox.
QUARANTINE_SUFFIX = ".quarantine"
#: Seconds between two safety-net scans of the read mailboxes.
SCAN_INTERVAL = 60.0
#: First and longest wait before a failed attempt is repeated, seconds.
RETRY_FIRST = 2.0
RETRY_MAX = 300.0
#: Posts from read mailboxes waiting for their answer at once, at most.
MAX_IN_FLIGHT = 16
#: Messages written that are remembered, so that one sent again is not written twice.
MAX_DONE = 10_000
#: Refused messages whose sealed reply is kept to repeat it unchanged.
MAX_REFUSALS = 1000
#: The refusal's text starts with this.
REFUSAL_PREFIX = "Not delivered: "
#: Seconds a MESSAGE from the PBX waits for the CRS's answer before it is answered 503.
SIP_ANSWER_WITHIN = 8.0
#: Attempts at a MESSAGE to the PBX that failed for a passing reason, before it is refused.
SIP_ATTEMPTS = 5
#: PBX statuses (and ours: 408 no answer, 502/503 not reachable) worth trying again.
SIP_PASSING = frozenset({408, 480, 500, 502, 503, 504})


class SipMessenger(Protocol):
    """The SIF as the mailboxes use it: MESSAGEs to the PBX (``Sif.send_message``)."""

    def send_message(self, sender: str, to: str, text: str) -> Deferred[int]: ...


@attrs.define(eq=False)
class Refusal:
    """A sealed reply that refuses a message, kept to post it again unchanged."""

    to: str
    content: bytes
    key: bytes


@attrs.define(eq=False)
class ReadFile:
    """A read mailbox file on its way: its post, and when to try it again."""

    box: Mailbox
    name: str
    key: bytes
    content: bytes
    recipient: str
    attempts: int = 0
    not_before: float = 0.0
    in_flight: bool = False


class DeskBase(service.Service):
    """The mailboxes' state and the session calls every side makes."""

    def __init__(
        self,
        clock: IReactorTime,
        mailboxes: Mailboxes,
        translate_maps: Sequence[TranslateMap],
        material: Callable[[], KeyMaterial | None],
        session: Callable[[], ClientSession | None],
        inotify: Callable[[], Any] | None = None,
        gid: Callable[[], int | None] = mail_group,
        router: Callable[[], Router] | None = None,
        sip: SipMessenger | None = None,
        messaging: Callable[[], bool] = lambda: False,
    ) -> None:
        self.clock = clock
        self.mailboxes = mailboxes
        self.translate_maps = tuple(translate_maps)
        self.material = material
        self.session = session
        self.make_inotify = inotify
        self.gid = gid
        #: Messages to the CIG no write mailbox takes go out by SIP when ``messaging``
        #: (the current router: a reload replaces it).
        self.router = router
        self.sip = sip
        self.messaging = messaging
        #: Messages on their way to the PBX (fingerprints), and attempts made at each.
        self.sip_sending: set[bytes] = set()
        self.sip_attempts: dict[bytes, int] = {}
        self._crypto: MessageCrypto | None = None
        #: Posts of ours waiting for their answer: request id -> what to do with it.
        self.pending: dict[int, Callable[[Message | None], None]] = {}
        #: Messages whose write failed, waiting to be tried again: id -> timer.
        self.retrying: dict[str, IDelayedCall] = {}
        self.refusals: dict[str, Refusal] = {}
        #: Fingerprints of the messages written lately (a repeat is confirmed, not rewritten).
        self.done: OrderedDict[bytes, None] = OrderedDict()
        self.files: dict[tuple[str, str], ReadFile] = {}
        #: Read mailboxes whose new/ could not be listed at the last scan.
        self.unreadable: set[str] = set()
        self._scan_call: IDelayedCall | None = None
        self._soon: IDelayedCall | None = None
        self._notifier: Any = None
        #: What was done, for tests and ``status``.
        self.written = 0
        self.refused = 0
        self.posted = 0
        self.quarantined = 0
        self.sip_sent = 0
        self.sip_posted = 0

    # ------------------------------------------------------------ lifecycle

    def crypto(self) -> MessageCrypto | None:
        material = self.material()
        if material is None:
            return None
        if self._crypto is None or self._crypto.material is not material:
            self._crypto = MessageCrypto(material)
        return self._crypto

    def _notify(self, type_: str, **fields: Any) -> bool:
        session = self.session()
        if session is None or session.state != "attached":
            return False
        session.notify(type_, **fields)
        return True

    def _post(
        self, to: str, content: bytes, key: bytes, answer: Callable[[Message | None], None]
    ) -> bool:
        session = self.session()
        if session is None or session.state != "attached":
            return False
        request = session.request("post", to=to, content=content, key=key)
        self.pending[request] = answer
        return True

    # ------------------------------------------------------------ the write side's, in MailDesk

    def _message(self, msg: Message) -> None:
        raise NotImplementedError

    def _retry_write(self, msg: Message, delay: float = RETRY_FIRST) -> None:
        raise NotImplementedError

    def _refuse(self, msg: Message, why: str) -> None:
        raise NotImplementedError

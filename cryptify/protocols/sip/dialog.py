"""
SIP dialogs (RFC 3261 section 12), sans-IO: the state two user agents
share after a 2xx (or a 1xx with a To tag) to an INVITE, and the
requests sent within it.
"""

from __future__ import annotations

import secrets

import attrs

from .address import NameAddr, shared_name_addr
from .errors import SipParseError
from .message import Headers, Request, Response

DialogId = tuple[str, str, str]


def new_tag() -> str:
    """A fresh From/To tag."""
    return secrets.token_hex(6)


def new_branch() -> str:
    """A fresh RFC 3261 Via branch."""
    return "z9hG4bK" + secrets.token_hex(8)


def _contact_uri(message: Request | Response) -> str | None:
    contacts = message.headers.values("Contact")
    if not contacts:
        return None
    try:
        return shared_name_addr(contacts[0]).uri
    except SipParseError:
        return None


@attrs.define
class Dialog:
    """
    One dialog: identifiers, the parties' URIs (From/To values), where
    in-dialog requests go (remote target, route set) and the CSeq numbers.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local: NameAddr
    remote: NameAddr
    remote_target: str
    route_set: tuple[str, ...] = ()
    local_cseq: int = 0
    remote_cseq: int | None = None

    @property
    def id(self) -> DialogId:
        """Call-ID, local tag, remote tag."""
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str) -> Dialog:
        """
        The dialog a UAS creates by answering C{invite} with C{local_tag}
        (12.1.1): route set from Record-Route in order, remote target from
        Contact. An RFC 2543 caller may send no Contact: then requests in
        the dialog go to its From URI, as RFC 2543 had it.

        @raise SipParseError: if the INVITE lacks what a dialog needs.
        """
        remote = invite.from_
        target = _contact_uri(invite)
        if target is None and not invite.headers.values("Contact"):
            target = remote.uri
        if target is None:
            raise SipParseError("INVITE without a usable Contact")
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote.tag or "",  # RFC 2543 callers send no From tag
            local=invite.to.with_tag(local_tag),
            remote=remote,
            remote_target=target,
            route_set=tuple(invite.headers.values("Record-Route")),
            remote_cseq=invite.cseq.number,
        )

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog:
        """
        The dialog a UAC learns from a response to its C{invite} (12.1.2):
        route set from Record-Route reversed.

        @raise SipParseError: if the response lacks a To tag or Contact.
        """
        remote = response.to
        target = _contact_uri(response)
        if target is None or remote.tag is None:
            raise SipParseError("response without Contact or To tag")
        local = invite.from_
        return cls(
            call_id=invite.call_id,
            local_tag=local.tag or "",
            remote_tag=remote.tag,
            local=local,
            remote=remote,
            remote_target=target,
            route_set=tuple(reversed(response.headers.values("Record-Route"))),
            local_cseq=invite.cseq.number,
        )

    def accept_remote_cseq(self, request: Request) -> bool:
        """
        Whether an in-dialog request's CSeq is in order (12.2.2); ACK and
        CANCEL reuse their INVITE's number and always pass.
        """
        if request.method in ("ACK", "CANCEL"):
            return True
        number = request.cseq.number
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def request(
        self,
        method: str,
        via: str,
        contact: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        cseq: int | None = None,
    ) -> Request:
        """
        A new request within the dialog (12.2.1.1), loose routing: the
        Request-URI is the remote target and the route set goes in Route.
        C{via} is the Via value (with a fresh branch). C{cseq} overrides
        the next local number (the ACK of a 2xx reuses its INVITE's).
        """
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        headers = Headers()
        headers = headers.add("Via", via)
        headers = headers.add("Max-Forwards", "70")
        headers = headers.add("From", str(self.local))
        headers = headers.add("To", str(self.remote))
        headers = headers.add("Call-ID", self.call_id)
        headers = headers.add("CSeq", f"{cseq} {method}")
        for route in self.route_set:
            headers = headers.add("Route", route)
        if contact is not None:
            headers = headers.add("Contact", contact)
        if content_type is not None:
            headers = headers.add("Content-Type", content_type)
        return Request(method, self.remote_target, headers, body)


def dialog_id_of(request: Request) -> DialogId | None:
    """
    The id (as the receiving UAS sees it) of the dialog C{request} is in,
    or C{None} for a request outside any dialog (no To tag).
    """
    try:
        to_tag = request.to.tag
        from_tag = request.from_.tag
    except SipParseError:
        return None
    if to_tag is None:
        return None
    return (request.call_id, to_tag, from_tag or "")

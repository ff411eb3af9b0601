"""
The one exception the SIP parsers raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .headers import Headers


class SipParseError(ValueError):
    """
    Input that is not acceptable SIP.

    C{status} and C{reason} are the response a server should send for it
    (400 Bad Request by default; 505 for another SIP version, 513 for an
    oversized message, 416 for an unsupported URI scheme). C{headers} holds
    the header fields when they could be read, so that the response can be
    built (it needs Via, From, To, Call-ID and CSeq); C{is_request} says
    whether the input looked like a request (responses are never answered).
    """

    def __init__(
        self,
        reason: str,
        status: int = 400,
        headers: Headers | None = None,
        is_request: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers
        self.is_request = is_request

"""
SIP (RFC 3261) as sans-IO pieces: message syntax (L{message}, L{address}),
SDP offer/answer (L{sdp}), transactions (L{transaction}) and dialogs
(L{dialog}); L{transport} holds the thin Twisted UDP and TCP adapters.
"""

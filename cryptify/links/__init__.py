"""
Long-lived client services both servers run towards their helpers: the
reconnecting control link to a media relay (L{cryptify.links.relay_link}).
The commands they send are wire formats in L{cryptify.protocols}.
"""

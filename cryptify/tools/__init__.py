"""
What the command lines and set-up steps share: running a CLI action against
a server's management socket (L{cryptify.tools.mgmtcli}) and making the
development TLS certificate (L{cryptify.tools.certs}).  These write files
and talk to the reactor; the wire formats they use live in
L{cryptify.protocols}.
"""

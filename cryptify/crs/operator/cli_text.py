"""crs-cli's words: its name and defaults, the overview ``crs-cli help``
prints, and the help of each element and argument."""

from __future__ import annotations

PROG = "crs-cli"
DEFAULT_SOCKET = "/run/crs/crs.sock"
DEFAULT_CONFIG = "/opt/crs/crs.conf"
#: Default size of a generated shared secret.
DEFAULT_SECRET_BITS = 128
#: Largest shared secret we generate, in bytes.
MAX_SECRET_BYTES = 1024
#: Largest update file sent to the CRS.
MAX_UPDATE_FILE = 16 * 1024 * 1024

HELP = """\
Cryptify Rendezvous Server command line: crs-cli ACTION [options]

  help [ACTION]                         this help, or the help of ACTION
                                        (also: crs-cli ACTION --help)
  version                               version of crs-cli
  check-config [FILE]                   validate crs.conf (default /opt/crs/crs.conf)
  apply FILE                            apply a protected monthly update file
  show version|services|attach|session|message|updates|system|account|relay|iw-crs
  show blacklist ACCOUNT
  show client-info ACCOUNT
  show push-token ACCOUNT URI
  show admins
  show admin NAME
  show admin-accounts NAME
  create sharedSecret [-b BITS | -B BYTES]
  create account ID [-s SECRET | -b BITS | -B BYTES]
  create admin NAME                     a remote admin; its secret is printed once
  list account
  list iw-crs                           the inter-working CRS instances and secrets
  delete account ID
  delete iw-crs IP
  delete admin NAME
  delete admin-account NAME ACCOUNT
  delete admin-account-authorization NAME ACCOUNT statistics|update
  add iw-crs IP SECRET [-c COMMENT]     trust the inter-working CRS at IP
  add admin-account NAME ACCOUNT        let admin NAME manage ACCOUNT
  add admin-account-authorization NAME ACCOUNT statistics|update
  reload account
  blacklist add|remove ACCOUNT URI
  purge client ACCOUNT URI
  purge clients ACCOUNT
  purge observed ACCOUNT
  check slot URI
  stats enable|disable|clear ACCOUNT
  stats export ACCOUNT                  tab-separated statistics, header first
  trace attach|session|message|object|event   (Ctrl-C stops)
  wakeup client account ACCOUNT URI     push a wake-up to a client now

options:
  --socket PATH     management socket of the CRS (default $CRS_CLI_SOCKET
                    or /run/crs/crs.sock)
"""

SHOW_SIMPLE = (
    "version",
    "services",
    "attach",
    "session",
    "message",
    "updates",
    "system",
    "account",
    "relay",
    "iw-crs",
)
STATS_OPS = ("enable", "disable", "clear", "export")
TRACE_ELEMENTS = ("attach", "session", "message", "object", "event")


ACCOUNT_HELP = "the account ID (the name of its file in accounts-dir)"
URI_HELP = "a client URI, tel:+NUMBER"
SHOW_HELP = {
    "version": "the version of the running CRS",
    "services": "the services and their state",
    "attach": "the attached clients",
    "session": "the calls in progress",
    "message": "the stored messages waiting for delivery",
    "updates": "the monthly update files applied, per account",
    "system": "the CRS hosts of the system and their links",
    "account": "the accounts and their counters",
    "relay": "the media relay and its sessions",
    "iw-crs": "the links to the inter-working CRS instances",
}
TRACE_HELP = {
    "attach": "attaches and detaches",
    "session": "call signalling",
    "message": "messages posted and delivered",
    "object": "every protocol object received and sent",
    "event": "server events",
}
ADMIN_HELP = "a remote admin's name (letters, digits, '-' and '_', at most 20)"
AUTHORIZATION_HELP = (
    "statistics (read and manage the account's statistics) or update (apply its monthly updates)"
)
SIZE_HELP = {
    "bits": "size in bits, rounded up to whole bytes (default 128)",
    "bytes": f"size in bytes (at most {MAX_SECRET_BYTES})",
}

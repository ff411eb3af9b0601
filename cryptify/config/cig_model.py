"""
What C{cig.conf} says, as frozen objects, and how to write it back.
"""

from __future__ import annotations

import attrs

from ._base import quote
from .crs_model import Endpoint
from .patterns import expand_pattern, match_pattern, translate

SIP_PORT = 5060
SIP_TLS_PORT = 5061
#: Seconds a SIP TCP connection may stay silent before the CIG closes it.
DEFAULT_TCP_IDLE_TIMEOUT = 300
#: What a SIP request from an address that is not a trusted peer gets.
UNTRUSTED_ANSWERS = ("403", "silence")
#: C{srtp} modes of the sip interface (SDES SRTP on the PBX leg).
SRTP_MODES = ("off", "offer", "require")


@attrs.frozen
class MapEntry:
    """
    C{entry NAME tel "PATTERN" sip "PATTERN";}: a TEL-URI pattern and the
    SIP-URI pattern it corresponds to. Either side matches; the other
    side, expanded, is the result.
    """

    name: str
    tel: str
    sip: str


@attrs.frozen
class UriMap:
    """
    C{map NAME { entry ...; }}: entries tried in order, first match wins.
    """

    name: str
    entries: tuple[MapEntry, ...] = ()

    def to_sip(self, tel_uri: str) -> str | None:
        """
        Match the C{tel} patterns; expand the first match's C{sip} pattern.
        """
        for entry in self.entries:
            params = match_pattern(entry.tel, tel_uri)
            if params is not None:
                return expand_pattern(entry.sip, params)
        return None

    def to_tel(self, sip_uri: str) -> str | None:
        """
        Match the C{sip} patterns; expand the first match's C{tel} pattern.
        """
        for entry in self.entries:
            params = match_pattern(entry.sip, sip_uri)
            if params is not None:
                return expand_pattern(entry.tel, params)
        return None


@attrs.frozen
class TranslateRule:
    """
    C{rule match "PATTERN" translation "PATTERN";}.
    """

    match: str
    translation: str


@attrs.frozen
class TranslateMap:
    """
    C{translate_map NAME { rule ...; }}: rules tried in order.
    """

    name: str
    rules: tuple[TranslateRule, ...] = ()

    def translate(self, text: str) -> str | None:
        """
        The first matching rule's translation of C{text}, if any rule matches.
        """
        for rule in self.rules:
            result = translate(rule.match, rule.translation, text)
            if result is not None:
                return result
        return None


@attrs.frozen
class PortRange:
    """
    C{rtp_port_range LOW HIGH;}, both ends included.
    """

    low: int
    high: int


@attrs.frozen
class AddressOverride:
    """
    C{rtp_remote_addr_override OLD NEW;}: send media for C{original} to
    C{replacement}.
    """

    original: str
    replacement: str


@attrs.frozen
class TelInterface:
    """
    C{interfaces { tel { ... } }}: the secure (UMSG) side.
    """

    extension_maps: tuple[str, ...] = ()
    source_maps: tuple[str, ...] = ()
    rtp_port_range: PortRange | None = None
    rtp_remote_addr_overrides: tuple[AddressOverride, ...] = ()

    def override(self, address: str) -> str:
        """
        The address to send media to in place of C{address}.
        """
        for o in self.rtp_remote_addr_overrides:
            if o.original == address:
                return o.replacement
        return address


#: REGISTER expiry the CIG asks for when C{register} gives none (seconds).
DEFAULT_REGISTER_EXPIRES = 3600


@attrs.frozen
class PbxAccount:
    """
    C{pbx_account "SIP-URI" { username "U"; password_file "PATH"; register SECONDS; }}
    in the sip interface: the CIG's credentials at one PBX server (the
    URI's host, port and transport, as L{cryptify.protocols.sip.locate}
    reads it), answered to its 401/407 challenges, and, with C{register},
    a registration of C{aor} (default C{sip:USERNAME@HOST}) kept up with
    that expiry. The password comes from C{password_file} (0600) or, in
    the file itself, from C{password}; it is never shown in a repr.
    """

    server: str
    username: str
    password: str | None = attrs.field(default=None, repr=False)
    password_file: str | None = None
    register: int | None = None
    aor: str | None = None


#: Digest algorithms the CIG may offer to its PBXs, in its order of preference.
CHALLENGE_ALGORITHMS = ("SHA-256", "MD5")


@attrs.frozen
class PbxChallenge:
    """
    C{pbx_challenge "ADDR|CIDR|NAME" { realm "R"; username "U";
    password_file "PATH"; algorithm SHA-256 MD5; }} in the sip interface:
    requests from the PBX at C{peer} (an address or network, as
    C{trusted_peer} writes it, or a host name the maps name, at the
    addresses it was last looked up to) that open something (out of a
    dialog, ACK and CANCEL excepted) must carry digest credentials for
    C{username} in C{realm}. The CIG offers C{algorithms} (upper case,
    in this order). The password comes from C{password_file} (0600) or
    C{password}; never in a repr.
    """

    peer: str
    realm: str
    username: str
    password: str | None = attrs.field(default=None, repr=False)
    password_file: str | None = None
    algorithms: tuple[str, ...] = CHALLENGE_ALGORITHMS


@attrs.frozen
class SipInterface:
    """
    C{interfaces { sip { ... } }}: the PBX side.

    C{bind}/C{port} are where the SIP trunk listens (UDP and TCP) and
    the address RTP uses; C{messaging} turns the text message interface
    (mailboxes) on. C{trusted_peers} are the networks (C{ADDR/PREFIX})
    taken as SIP peers besides the PBX servers the maps name;
    C{untrusted_answer} is what others get (C{403} or C{silence});
    C{tcp_idle_timeout} closes silent SIP TCP connections (seconds).
    """

    extension_maps: tuple[str, ...] = ()
    source_maps: tuple[str, ...] = ()
    bind: str = "0.0.0.0"
    port: int = SIP_PORT
    messaging: bool = False
    rtp_port_range: PortRange | None = None
    rtp_remote_addr_overrides: tuple[AddressOverride, ...] = ()
    trusted_peers: tuple[str, ...] = ()
    untrusted_answer: str = "403"
    tcp_idle_timeout: int = DEFAULT_TCP_IDLE_TIMEOUT
    pbx_accounts: tuple[PbxAccount, ...] = ()
    #: PBXs whose requests must carry digest credentials.
    pbx_challenges: tuple[PbxChallenge, ...] = ()
    #: The CIG's own certificate (chain) and private key, PEM files: SIP
    #: over TLS is listened for on C{tls_port} when they are given, and
    #: presented to PBXs that ask for a client certificate.
    tls_certificate: str | None = None
    tls_key: str | None = None
    #: CA certificates (PEM) trusted for the PBXs' certificates; None:
    #: the system's trust store.
    tls_ca: str | None = None
    tls_port: int = SIP_TLS_PORT
    #: SDES SRTP on the PBX leg: C{off} (plain RTP only, a C{RTP/SAVP}
    #: offer gets 488), C{offer} (our offers are C{RTP/SAVP} with
    #: C{a=crypto}; either kind of offer is answered) or C{require} (only
    #: C{RTP/SAVP} offers are answered, ours are C{RTP/SAVP}).
    srtp: str = "off"

    def override(self, address: str) -> str:
        """
        The address to send media to in place of C{address}.
        """
        for o in self.rtp_remote_addr_overrides:
            if o.original == address:
                return o.replacement
        return address


@attrs.frozen
class Interfaces:
    """
    C{interfaces { tel { ... } sip { ... } }}.
    """

    tel: TelInterface = TelInterface()
    sip: SipInterface = SipInterface()


@attrs.frozen
class Mailbox:
    """
    One C{read} or C{write} block of C{mailboxes}: a Maildir and the
    translate maps (by name) for its C{From} and C{To} headers.
    """

    path: str
    map_from: str
    map_to: str


@attrs.frozen
class Mailboxes:
    """
    C{mailboxes { read { ... } write { ... } }}, in file order.
    """

    read: tuple[Mailbox, ...] = ()
    write: tuple[Mailbox, ...] = ()


@attrs.frozen
class CrsLink:
    """
    C{crs { address HOST PORT; keystore "DIR"; ca "FILE"; }}: the CRS the
    CIG attaches to, the directory holding its keystore (C{.ks.tel:NUMBER})
    and, optionally, the CA certificates to verify the CRS with.
    """

    address: Endpoint = attrs.field(default=Endpoint("127.0.0.1", 5223))
    keystore: str = "/opt/cig/userdata"
    ca: str | None = None


@attrs.frozen
class RelayLink:
    """
    C{relay { control "PATH"; fast_path auto|off; }}: the CIG relay's
    control socket, and whether its bridge uses the C packet path where it
    was built (C{auto}) or only the Python one (C{off}).
    """

    control: str = "/run/cig/relay.sock"
    fast_path: str = "auto"


@attrs.frozen
class Management:
    """
    C{management { bind ADDR PORT; cookie "PATH"; socket "PATH"; }}: the
    TCP management port (cookie-protected) and the UNIX socket.
    """

    bind: Endpoint = attrs.field(default=Endpoint("127.0.0.1", 8083))
    cookie: str = "/opt/cig/mgmt.cookie"
    socket: str = "/run/cig/cig.sock"


@attrs.frozen
class Logging:
    """
    C{logging { dir "PATH"; call_records "PATH"; call_records_syslog true; }}:
    the log directory, and where a JSON line is written for each call
    (none by default), also to syslog with C{call_records_syslog true}.
    """

    dir: str = "/var/log/cig"
    call_records: str | None = None
    call_records_syslog: bool = False


@attrs.frozen
class CigConfig:
    """
    All of C{cig.conf}. Maps and translate maps have separate name spaces
    and keep file order; references to them are by name.
    """

    maps: tuple[UriMap, ...] = ()
    translate_maps: tuple[TranslateMap, ...] = ()
    interfaces: Interfaces = Interfaces()
    mailboxes: Mailboxes = Mailboxes()
    crs: CrsLink = CrsLink()
    relay: RelayLink = RelayLink()
    management: Management = Management()
    logging: Logging = Logging()
    #: C{metrics { bind [ADDR] PORT; }}: the Prometheus endpoint (C{None}: off).
    metrics: Endpoint | None = None
    notify: str = "/opt/cig/scripts/notify.sh"

    @property
    def sip(self) -> SipInterface:
        return self.interfaces.sip

    @property
    def tel(self) -> TelInterface:
        return self.interfaces.tel

    def get_map(self, name: str) -> UriMap:
        """
        The C{map} called C{name} (the parser made sure it exists).
        """
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(name)

    def get_translate_map(self, name: str) -> TranslateMap:
        """
        The C{translate_map} called C{name}.
        """
        for m in self.translate_maps:
            if m.name == name:
                return m
        raise KeyError(name)


def _interface_lines(i: TelInterface | SipInterface) -> list[str]:
    out = [f"extension map {name};" for name in i.extension_maps]
    out += [f"source map {name};" for name in i.source_maps]
    if isinstance(i, SipInterface):
        out.append(f"bind {i.bind} {i.port};")
        out.append(f"messaging {'true' if i.messaging else 'false'};")
        out += [f"trusted_peer {peer};" for peer in i.trusted_peers]
        out.append(f"untrusted_answer {i.untrusted_answer};")
        out.append(f"tcp_idle_timeout {i.tcp_idle_timeout};")
        for account in i.pbx_accounts:
            out += _block(f"pbx_account {quote(account.server)}", _account_lines(account))
        for guard in i.pbx_challenges:
            out += _block(f"pbx_challenge {quote(guard.peer)}", _challenge_lines(guard))
        for name in ("tls_certificate", "tls_key", "tls_ca"):
            value = getattr(i, name)
            if value is not None:
                out.append(f"{name} {quote(value)};")
        if i.tls_port != SIP_TLS_PORT:
            out.append(f"tls_port {i.tls_port};")
    if i.rtp_port_range is not None:
        out.append(f"rtp_port_range {i.rtp_port_range.low} {i.rtp_port_range.high};")
    out += [
        f"rtp_remote_addr_override {o.original} {o.replacement};"
        for o in i.rtp_remote_addr_overrides
    ]
    return out


def _account_lines(account: PbxAccount) -> list[str]:
    out = [f"username {quote(account.username)};"]
    if account.password_file is not None:
        out.append(f"password_file {quote(account.password_file)};")
    if account.password is not None:
        out.append(f"password {quote(account.password)};")
    if account.register is not None:
        out.append(f"register {account.register};")
    if account.aor is not None:
        out.append(f"aor {quote(account.aor)};")
    return out


def _challenge_lines(guard: PbxChallenge) -> list[str]:
    out = [f"realm {quote(guard.realm)};", f"username {quote(guard.username)};"]
    if guard.password_file is not None:
        out.append(f"password_file {quote(guard.password_file)};")
    if guard.password is not None:
        out.append(f"password {quote(guard.password)};")
    if guard.algorithms != CHALLENGE_ALGORITHMS:
        out.append(f"algorithm {' '.join(guard.algorithms)};")
    return out


def map_lines(cfg: CigConfig) -> list[str]:
    """
    Every map entry, translate rule and mailbox of C{cfg}, one line each,
    in the order they are tried: what C{cig.log} records at start and on
    each reload, so the log says how messages and calls were routed.
    """
    out: list[str] = []
    for m in cfg.maps:
        if not m.entries:
            out.append(f"map {m.name}: no entries")
        for e in m.entries:
            out.append(f"map {m.name} entry {e.name}: tel {quote(e.tel)} sip {quote(e.sip)}")
    for t in cfg.translate_maps:
        if not t.rules:
            out.append(f"translate_map {t.name}: no rules")
        for number, r in enumerate(t.rules, 1):
            out.append(
                f"translate_map {t.name} rule {number}: "
                f"match {quote(r.match)} translation {quote(r.translation)}"
            )
    for kind, boxes in (("read", cfg.mailboxes.read), ("write", cfg.mailboxes.write)):
        for box in boxes:
            out.append(
                f"mailbox {kind} {quote(box.path)}: "
                f"map_from translate_map {box.map_from}, map_to translate_map {box.map_to}"
            )
    return out


def _block(head: str, lines: list[str], indent: str = "") -> list[str]:
    return [f"{indent}{head} {{", *(f"{indent}    {x}" for x in lines), f"{indent}}}"]


def _section(out: list[str], head: str, lines: list[str]) -> None:
    out.extend(_block(head, lines))
    out.append("")


def render_cig_config(cfg: CigConfig) -> str:
    """
    Write C{cfg} as C{cig.conf} text that parses back to an equal object.
    """
    out: list[str] = []
    for m in cfg.maps:
        entries: list[str] = []
        for e in m.entries:
            entries += [f"entry {e.name}", f"    tel {quote(e.tel)}", f"    sip {quote(e.sip)};"]
        _section(out, f"map {m.name}", entries)
    for t in cfg.translate_maps:
        rules: list[str] = []
        for r in t.rules:
            rules += [
                "rule",
                f"    match {quote(r.match)}",
                f"    translation {quote(r.translation)};",
            ]
        _section(out, f"translate_map {t.name}", rules)
    ifaces = _block("tel", _interface_lines(cfg.interfaces.tel))
    ifaces += _block("sip", _interface_lines(cfg.interfaces.sip))
    _section(out, "interfaces", ifaces)
    boxes: list[str] = []
    for kind, items in (("read", cfg.mailboxes.read), ("write", cfg.mailboxes.write)):
        for box in items:
            boxes += _block(
                kind,
                [
                    f"path {quote(box.path)};",
                    f"map_from translate_map {box.map_from};",
                    f"map_to translate_map {box.map_to};",
                ],
            )
    if boxes:
        _section(out, "mailboxes", boxes)
    crs = [
        f"address {cfg.crs.address.host} {cfg.crs.address.port};",
        f"keystore {quote(cfg.crs.keystore)};",
    ]
    if cfg.crs.ca is not None:
        crs.append(f"ca {quote(cfg.crs.ca)};")
    _section(out, "crs", crs)
    relay = [f"control {quote(cfg.relay.control)};"]
    if cfg.relay.fast_path != "auto":
        relay.append(f"fast_path {cfg.relay.fast_path};")
    _section(out, "relay", relay)
    mgmt = cfg.management
    _section(
        out,
        "management",
        [
            f"bind {mgmt.bind.host} {mgmt.bind.port};",
            f"cookie {quote(mgmt.cookie)};",
            f"socket {quote(mgmt.socket)};",
        ],
    )
    logging = [f"dir {quote(cfg.logging.dir)};"]
    if cfg.logging.call_records is not None:
        logging.append(f"call_records {quote(cfg.logging.call_records)};")
    if cfg.logging.call_records_syslog:
        logging.append("call_records_syslog true;")
    _section(out, "logging", logging)
    if cfg.metrics is not None:
        _section(out, "metrics", [f"bind {cfg.metrics.host} {cfg.metrics.port};"])
    out.append(f"notify {quote(cfg.notify)};")
    return "\n".join(out) + "\n"

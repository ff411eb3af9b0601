"""
C{cig.conf}: the CIG's maps, interfaces, mailboxes and links.

Free-form text: blanks and line breaks separate words; C{//} comments run
to the end of the line and C{/* ... */} comments may span lines. A
statement ends with C{;}; the C{;} may be left out when the statement is
the last thing on its line (as the manual's outline does with C{bind}).
A C{{...}} block needs no C{;}, but one after its C{}} is allowed. Names
may be any word, keywords included; patterns and paths are double-quoted.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import attrs

from ._base import (
    ConfigError,
    Context,
    Tok,
    check_host,
    check_int,
    check_ip,
    check_network,
    check_port,
    decode,
    read_config_file,
)
from ._cig_grammar import NAME_RE, Block, CigGrammar, Stmt
from .cig_model import (
    CHALLENGE_ALGORITHMS,
    SRTP_MODES,
    UNTRUSTED_ANSWERS,
    AddressOverride,
    CigConfig,
    CrsLink,
    Interfaces,
    Logging,
    Mailbox,
    Mailboxes,
    Management,
    MapEntry,
    PbxAccount,
    PbxChallenge,
    PortRange,
    RelayLink,
    SipInterface,
    TelInterface,
    TranslateMap,
    TranslateRule,
    UriMap,
)
from .crs_model import METRICS_HOST, Endpoint
from .patterns import PatternError, check_pattern

_grammar = CigGrammar()
#: Longest C{tcp_idle_timeout}, in seconds (a day).
MAX_TCP_IDLE_TIMEOUT = 86400
#: Most C{trusted_peer} lines in the sip interface.
MAX_TRUSTED_PEERS = 1000
#: Most C{pbx_account} blocks in the sip interface.
MAX_PBX_ACCOUNTS = 64
#: Longest C{register} expiry, in seconds (a day).
MAX_REGISTER_EXPIRES = 86400
#: Shortest C{register} expiry, in seconds.
MIN_REGISTER_EXPIRES = 10
#: Longest user name, password or URI in a C{pbx_account} block.
MAX_CREDENTIAL_LENGTH = 256
#: What a C{pbx_account} server URI or C{aor} looks like (the SIF's locator reads it at start).
_SIP_URI = re.compile(
    r"sip:(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+@)?"
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::[0-9]{1,5})?"
    r"(?:;[A-Za-z0-9\-_.!~*'()%]+(?:=[A-Za-z0-9\-_.!~*'()%]+)?)*"
)
#: C{relay { fast_path auto|off; }}: the bridge's C packet path.
FAST_PATH = "fast_path"
FAST_PATHS = ("auto", "off")
#: C{logging { call_records_syslog true; }}: call records to syslog too.
SYSLOG_RECORDS = "call_records_syslog"
_SIP_ONLY = (
    "bind",
    "messaging",
    "trusted_peer",
    "untrusted_answer",
    "tcp_idle_timeout",
    "pbx_account",
    "pbx_challenge",
    "tls_certificate",
    "tls_key",
    "tls_ca",
    "tls_port",
    "srtp",
)
_ONCE = frozenset(
    {"interfaces", "mailboxes", "crs", "relay", "management", "logging", "notify", "metrics"}
)


class _Builder:
    """
    Turns the parsed blocks into a L{CigConfig}, checking names, values
    and references.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.refs: list[tuple[Tok, str]] = []

    def error(self, message: str, at: Tok, expected: str | None = None) -> ConfigError:
        return self.ctx.error(message, at, expected=expected)

    def once(self, seen: dict[str, Tok], kw: Tok, where: str = "") -> None:
        if kw.value in seen:
            first = seen[kw.value]
            raise self.error(f"duplicate '{kw.value}'{where} (first on line {first.line})", kw)
        seen[kw.value] = kw

    def name(self, tok: Tok, what: str) -> str:
        if not NAME_RE.match(tok.value):
            raise self.error(f"bad {what} name", tok, expected="letters, digits, '_', '-', '.'")
        return tok.value

    def pattern(self, tok: Tok) -> str:
        try:
            check_pattern(tok.value)
        except PatternError as e:
            column = tok.column + 1 + e.offset
            raise self.ctx.error(
                e.message, Tok(tok.value, tok.line, column), expected="{name} parameters"
            ) from None
        return tok.value

    def path(self, tok: Tok) -> str:
        if not tok.value or "\x00" in tok.value:
            raise self.error("bad path", tok, expected="a file system path")
        return tok.value

    def build(self, items: list[Stmt | Block]) -> CigConfig:
        seen: dict[str, Tok] = {}
        fields: dict[str, Any] = {}
        maps: dict[str, UriMap] = {}
        tmaps: dict[str, TranslateMap] = {}
        map_toks: dict[str, Tok] = {}
        tmap_toks: dict[str, Tok] = {}
        for item in items:
            kind = item.kw.value
            if kind in _ONCE:
                self.once(seen, item.kw)
            if isinstance(item, Stmt):
                fields["notify"] = self.path(item.args[0])
            elif kind == "map":
                m = self.uri_map(item)
                if m.name in maps:
                    first = map_toks[m.name].line
                    raise self.error(
                        f"duplicate map name (first on line {first})", item.name or item.kw
                    )
                maps[m.name], map_toks[m.name] = m, item.kw
            elif kind == "translate_map":
                t = self.translate_map(item)
                if t.name in tmaps:
                    first = tmap_toks[t.name].line
                    raise self.error(
                        f"duplicate translate_map name (first on line {first})",
                        item.name or item.kw,
                    )
                tmaps[t.name], tmap_toks[t.name] = t, item.kw
            else:
                fields[kind] = getattr(self, "b_" + kind)(item)
        for tok, space in self.refs:
            names = maps if space == "map" else tmaps
            if tok.value not in names:
                known = f"one of: {', '.join(names)}" if names else f"no {space} is defined"
                raise self.error(f"reference to an undefined {space}", tok, expected=known)
        return CigConfig(maps=tuple(maps.values()), translate_maps=tuple(tmaps.values()), **fields)

    def uri_map(self, block: Block) -> UriMap:
        assert block.name is not None
        entries: dict[str, MapEntry] = {}
        toks: dict[str, Tok] = {}
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            name_tok, tel, sip = stmt.args
            name = self.name(name_tok, "entry")
            if name in entries:
                first = toks[name].line
                raise self.error(f"duplicate entry name (first on line {first})", name_tok)
            entries[name] = MapEntry(name, self.pattern(tel), self.pattern(sip))
            toks[name] = name_tok
        return UriMap(self.name(block.name, "map"), tuple(entries.values()))

    def translate_map(self, block: Block) -> TranslateMap:
        assert block.name is not None
        rules = []
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            rules.append(TranslateRule(self.pattern(stmt.args[0]), self.pattern(stmt.args[1])))
        return TranslateMap(self.name(block.name, "translate_map"), tuple(rules))

    def b_interfaces(self, block: Block) -> Interfaces:
        seen: dict[str, Tok] = {}
        result = Interfaces()
        for iface in block.body:
            assert isinstance(iface, Block)
            self.once(seen, iface.kw, " interface")
            if iface.kw.value == "tel":
                tel = TelInterface(**self.interface(iface, sip=False))
                result = attrs.evolve(result, tel=tel)
            else:
                sip = SipInterface(**self.interface(iface, sip=True))
                result = attrs.evolve(result, sip=sip)
        return result

    def interface(self, block: Block, sip: bool) -> dict[str, Any]:
        ctx = self.ctx
        fields: dict[str, Any] = {}
        ext: dict[str, Tok] = {}
        src: dict[str, Tok] = {}
        overrides: dict[str, AddressOverride] = {}
        peers: dict[str, Tok] = {}
        seen: dict[str, Tok] = {}
        accounts: dict[str, Tok] = {}
        pbx: list[PbxAccount] = []
        guards: dict[str, PbxChallenge] = {}
        guarded: dict[str, Tok] = {}
        for stmt in block.body:
            if isinstance(stmt, Block):
                if not sip:
                    raise self.error(f"'{stmt.kw.value}' belongs in the sip interface", stmt.kw)
                if stmt.kw.value == "pbx_challenge":
                    guard = self.pbx_challenge(stmt)
                    assert stmt.name is not None
                    if guard.peer in guarded:
                        first = guarded[guard.peer].line
                        raise self.error(
                            f"pbx_challenge listed twice (first on line {first})", stmt.name
                        )
                    if len(guards) >= MAX_PBX_ACCOUNTS:
                        raise self.error("too many pbx_challenge blocks", stmt.kw)
                    guarded[guard.peer] = stmt.name
                    guards[guard.peer] = guard
                    continue
                account = self.pbx_account(stmt)
                assert stmt.name is not None
                if account.server in accounts:
                    first = accounts[account.server].line
                    raise self.error(f"pbx_account listed twice (first on line {first})", stmt.name)
                if len(pbx) >= MAX_PBX_ACCOUNTS:
                    raise self.error("too many pbx_account blocks", stmt.kw)
                accounts[account.server] = stmt.name
                pbx.append(account)
                continue
            kw, args = stmt.kw, stmt.args
            if kw.value in ("extension", "source"):
                names = ext if kw.value == "extension" else src
                self.once(names, args[0], f" {kw.value} map")
                self.refs.append((args[0], "map"))
                continue
            if kw.value == "rtp_remote_addr_override":
                o = AddressOverride(check_ip(ctx, args[0]), check_ip(ctx, args[1]))
                if o.original in overrides:
                    raise self.error("address already overridden", args[0])
                overrides[o.original] = o
                continue
            if kw.value in _SIP_ONLY and not sip:
                raise self.error(f"'{kw.value}' belongs in the sip interface", kw)
            if kw.value == "trusted_peer":
                peer = self.peer(args[0])
                if peer in peers:
                    first = peers[peer].line
                    raise self.error(f"peer listed twice (first on line {first})", args[0])
                if len(peers) >= MAX_TRUSTED_PEERS:
                    raise self.error("too many trusted peers", args[0], expected="CIDR ranges")
                peers[peer] = args[0]
                continue
            self.once(seen, kw)
            if kw.value == "bind":
                fields["bind"] = check_ip(ctx, args[0])
                if len(args) > 1:
                    fields["port"] = check_port(ctx, args[1], listening=True)
            elif kw.value == "messaging":
                fields["messaging"] = args[0].value == "true"
            elif kw.value == "untrusted_answer":
                if args[0].value not in UNTRUSTED_ANSWERS:
                    raise self.error("bad untrusted_answer", args[0], expected="403 or silence")
                fields["untrusted_answer"] = args[0].value
            elif kw.value == "tcp_idle_timeout":
                fields["tcp_idle_timeout"] = check_int(
                    ctx, args[0], "timeout", 1, MAX_TCP_IDLE_TIMEOUT
                )
            elif kw.value in ("tls_certificate", "tls_key", "tls_ca"):
                fields[kw.value] = self.path(args[0])
            elif kw.value == "tls_port":
                fields["tls_port"] = check_port(ctx, args[0], listening=True)
            elif kw.value == "srtp":
                if args[0].value not in SRTP_MODES:
                    raise self.error("bad srtp mode", args[0], expected="off, offer or require")
                fields["srtp"] = args[0].value
            else:
                low = check_int(ctx, args[0], "port", 1, 65535)
                high = check_int(ctx, args[1], "port", 1, 65535)
                if low > high:
                    raise self.error("range is empty", args[0], expected=f"LOW <= {high}")
                fields["rtp_port_range"] = PortRange(low, high)
        fields["extension_maps"] = tuple(ext)
        fields["source_maps"] = tuple(src)
        fields["rtp_remote_addr_overrides"] = tuple(overrides.values())
        if sip:
            fields["trusted_peers"] = tuple(peers)
            fields["pbx_accounts"] = tuple(pbx)
            fields["pbx_challenges"] = tuple(guards.values())
            if ("tls_certificate" in seen) != ("tls_key" in seen):
                given = seen.get("tls_certificate") or seen["tls_key"]
                raise self.error(
                    "tls_certificate and tls_key go together",
                    given,
                    expected="both, or neither",
                )
        return fields

    def pbx_account(self, block: Block) -> PbxAccount:
        """
        C{pbx_account "SIP-URI" { ... }}: a SIP URI the locator can read, a user
        name, exactly one of C{password} and C{password_file}.
        """
        assert block.name is not None
        server = self.credential(block.name, "server URI")
        if not _SIP_URI.fullmatch(server) or "@" in server:
            raise self.error(
                "bad pbx_account URI", block.name, expected='"sip:HOST[:PORT][;transport=tcp]"'
            )
        seen: dict[str, Tok] = {}
        fields: dict[str, Any] = {}
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            self.once(seen, stmt.kw, " in pbx_account")
            kw, arg = stmt.kw.value, stmt.args[0]
            if kw == "register":
                fields["register"] = check_int(
                    self.ctx, arg, "expiry", MIN_REGISTER_EXPIRES, MAX_REGISTER_EXPIRES
                )
            elif kw == "password_file":
                fields[kw] = self.path(arg)
            elif kw == "aor":
                aor = self.credential(arg, "aor")
                if not _SIP_URI.fullmatch(aor):
                    raise self.error("bad aor", arg, expected='"sip:USER@HOST"')
                fields[kw] = aor
            else:
                fields[kw] = self.credential(arg, kw)
        if "username" not in fields:
            raise self.error(
                "pbx_account block has no 'username'", block.kw, expected='username "NAME"'
            )
        if ("password" in fields) == ("password_file" in fields):
            raise self.error(
                "pbx_account block needs one of 'password' and 'password_file'",
                block.kw,
                expected='password_file "PATH" (a 0600 file)',
            )
        return PbxAccount(server=server, **fields)

    def pbx_challenge(self, block: Block) -> PbxChallenge:
        """
        C{pbx_challenge "ADDR|CIDR|NAME" { ... }}: the peer as
        C{trusted_peer} writes it, or a PBX host name of the maps; a realm,
        a user name, exactly one of C{password} and C{password_file}, and
        optionally the algorithms offered.
        """
        assert block.name is not None
        name = block.name.value
        if "/" in name or ":" in name or re.fullmatch(r"[0-9.]+", name):
            peer = self.peer(block.name)
        else:
            peer = check_host(self.ctx, block.name).lower()
        seen: dict[str, Tok] = {}
        fields: dict[str, Any] = {}
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            self.once(seen, stmt.kw, " in pbx_challenge")
            kw, arg = stmt.kw.value, stmt.args[0]
            if kw == "password_file":
                fields[kw] = self.path(arg)
            elif kw == "algorithm":
                names: list[str] = []
                for tok in stmt.args:
                    name = tok.value.upper()
                    if name not in CHALLENGE_ALGORITHMS or name in names:
                        raise self.error("bad algorithm", tok, expected="SHA-256 and/or MD5")
                    names.append(name)
                fields["algorithms"] = tuple(names)
            elif kw == "realm":
                realm = self.credential(arg, "realm")
                if '"' in realm or "\\" in realm:
                    raise self.error("bad realm", arg, expected="no '\"' or '\\'")
                fields[kw] = realm
            else:
                fields[kw] = self.credential(arg, kw)
        for needed in ("realm", "username"):
            if needed not in fields:
                raise self.error(
                    f"pbx_challenge block has no '{needed}'", block.kw, expected=f'{needed} "NAME"'
                )
        if ("password" in fields) == ("password_file" in fields):
            raise self.error(
                "pbx_challenge block needs one of 'password' and 'password_file'",
                block.kw,
                expected='password_file "PATH" (a 0600 file)',
            )
        return PbxChallenge(peer=peer, **fields)

    def credential(self, tok: Tok, what: str) -> str:
        """
        A user name, password or URI: printable, one line, not too long.
        A bad password is reported by its position only, never its text.
        """
        value = tok.value
        if not value or len(value) > MAX_CREDENTIAL_LENGTH or not value.isprintable():
            shown = Tok("(hidden)", tok.line, tok.column) if what == "password" else tok
            raise self.error(
                f"bad {what}", shown, expected=f"1 to {MAX_CREDENTIAL_LENGTH} printable characters"
            )
        return value

    def peer(self, tok: Tok) -> str:
        """A C{trusted_peer}: an address (a /32 or /128) or a CIDR range."""
        if "/" in tok.value:
            return str(check_network(self.ctx, tok))
        address = check_ip(self.ctx, tok)
        return str(ipaddress.ip_network(address))

    def b_mailboxes(self, block: Block) -> Mailboxes:
        read: list[Mailbox] = []
        write: list[Mailbox] = []
        paths: dict[str, Tok] = {}
        for box in block.body:
            assert isinstance(box, Block)
            seen: dict[str, Tok] = {}
            fields: dict[str, str] = {}
            for stmt in box.body:
                assert isinstance(stmt, Stmt)
                self.once(seen, stmt.kw)
                if stmt.kw.value == "path":
                    path = self.path(stmt.args[0])
                    if path in paths:
                        first = paths[path].line
                        raise self.error(
                            f"mailbox path used twice (first on line {first})", stmt.args[0]
                        )
                    paths[path] = stmt.args[0]
                    fields["path"] = path
                else:
                    self.refs.append((stmt.args[0], "translate_map"))
                    fields[stmt.kw.value] = stmt.args[0].value
            for needed in ("path", "map_from", "map_to"):
                if needed not in fields:
                    raise self.error(
                        f"{box.kw.value} mailbox has no '{needed}'",
                        box.kw,
                        expected="path, map_from and map_to",
                    )
            (read if box.kw.value == "read" else write).append(Mailbox(**fields))
        return Mailboxes(tuple(read), tuple(write))

    def b_crs(self, block: Block) -> CrsLink:
        seen: dict[str, Tok] = {}
        fields: dict[str, Any] = {}
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            self.once(seen, stmt.kw)
            if stmt.kw.value == "address":
                host, port = stmt.args
                fields["address"] = Endpoint(check_host(self.ctx, host), check_port(self.ctx, port))
            else:
                fields[stmt.kw.value] = self.path(stmt.args[0])
        return CrsLink(**fields)

    def b_relay(self, block: Block) -> RelayLink:
        fast = [s for s in block.body if isinstance(s, Stmt) and s.kw.value == FAST_PATH]
        seen: dict[str, Tok] = {}
        for stmt in fast:
            self.once(seen, stmt.kw)
        fields: dict[str, Any] = dict(self.paths(block, skip=FAST_PATH))
        if fast:
            value = fast[0].args[0]
            if value.value not in FAST_PATHS:
                raise self.error("fast_path is auto or off", value, expected="auto or off")
            fields[FAST_PATH] = value.value
        return RelayLink(**fields)

    def b_logging(self, block: Block) -> Logging:
        syslog = [s for s in block.body if isinstance(s, Stmt) and s.kw.value == SYSLOG_RECORDS]
        seen: dict[str, Tok] = {}
        for stmt in syslog:
            self.once(seen, stmt.kw)
        fields: dict[str, Any] = dict(self.paths(block, skip=SYSLOG_RECORDS))
        if syslog:
            fields[SYSLOG_RECORDS] = syslog[0].args[0].value == "true"
        return Logging(**fields)

    def b_management(self, block: Block) -> Management:
        fields: dict[str, Any] = {}
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            if stmt.kw.value == "bind":
                if "bind" in fields:
                    raise self.error("duplicate 'bind'", stmt.kw)
                host, port = stmt.args
                fields["bind"] = Endpoint(
                    check_ip(self.ctx, host), check_port(self.ctx, port, listening=True)
                )
        fields.update(self.paths(block, skip="bind"))
        return Management(**fields)

    def b_metrics(self, block: Block) -> Endpoint | None:
        found: Endpoint | None = None
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            if found is not None:
                raise self.error("duplicate 'bind'", stmt.kw)
            host = check_ip(self.ctx, stmt.args[0]) if len(stmt.args) == 2 else METRICS_HOST
            found = Endpoint(host, check_port(self.ctx, stmt.args[-1], listening=True))
        if found is None:
            raise self.error("metrics needs a bind line", block.kw, expected="bind [ADDR] PORT;")
        return found

    def paths(self, block: Block, skip: str = "") -> dict[str, str]:
        seen: dict[str, Tok] = {}
        fields: dict[str, str] = {}
        for stmt in block.body:
            assert isinstance(stmt, Stmt)
            if stmt.kw.value != skip:
                self.once(seen, stmt.kw)
                fields[stmt.kw.value] = self.path(stmt.args[0])
        return fields


def parse_cig_config(text: str | bytes, filename: str = "<string>") -> CigConfig:
    """
    Parse the text of a C{cig.conf}.

    @raise ConfigError: if it is not valid.
    """
    text = decode(text, filename)
    items = _grammar.parse_text(text, filename)
    return _Builder(Context(filename, text)).build(items)


def load_cig_config(path: str | Path) -> CigConfig:
    """
    Read and parse a C{cig.conf} file.
    """
    return parse_cig_config(read_config_file(path), str(path))

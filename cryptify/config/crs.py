"""
C{crs.conf}: the pool-wide CRS configuration, identical on every instance.

Two sections. C{[GLOBAL]} holds the pool's shared secret, push settings,
keep-alive and address-map rules, and where this implementation listens,
keeps its data and finds Redis. C{[POOL]} declares the instances (C{host})
and their public addresses (C{ip}); the order of C{host} lines is the
order in which the 16384 slots are split between them.

This module reads and writes the file; the objects it gives are in
L{cryptify.config.crs_model}.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ._base import (
    Context,
    Tok,
    check_host,
    check_int,
    check_ip,
    check_network,
    check_port,
    decode,
    quote,
    read_config_file,
)
from ._lines import Args, Line, LineGrammar, parse_lines
from .crs_model import (
    APNS_TYPES,
    FEATURES,
    KEEP_ALIVE_METHODS,
    MAX_KEEP_ALIVE_MS,
    MAX_NOTIFY_TIMEOUT_SECONDS,
    METRICS_HOST,
    REDIS_MODES,
    AddressMap,
    Cps,
    CrsConfig,
    CrsGlobal,
    Endpoint,
    IPNetwork,
    KeepAlive,
    Pool,
    PoolHost,
    RedisSettings,
)

__all__ = [
    "APNS_TYPES",
    "FEATURES",
    "KEEP_ALIVE_METHODS",
    "MAX_KEEP_ALIVE_MS",
    "MAX_NOTIFY_TIMEOUT_SECONDS",
    "REDIS_MODES",
    "AddressMap",
    "Cps",
    "CrsConfig",
    "CrsGlobal",
    "Endpoint",
    "IPNetwork",
    "KeepAlive",
    "Pool",
    "PoolHost",
    "RedisSettings",
    "check_name",
    "check_path",
    "load_crs_config",
    "parse_crs_config",
    "render_crs_config",
    "seconds",
    "value",
]


# Directive -> usage, per section.
GLOBAL_USAGE = {
    "key": "SECRET",
    "features": "[push]",
    "cps": "HOST PORT ID SECRET",
    "push-config": "apns type direct|cps | apns|cps trust CA-FILE",
    "keep-alive": "CIDR tcp|ws MS",
    "client-max-message": "BYTES",
    "client-attach-timeout": "SECONDS",
    "client-max-unattached-per-address": "N",
    "client-max-unattached": "N",
    "client-max-handshakes": "N",
    "addr-map": "IP IP",
    "listen": "ADDR PORT",
    "tls-certificate": "PATH",
    "tls-key": "PATH",
    "admin-listen": "ADDR PORT",
    "relay": "ADDR PORT",
    "relay-control": "PATH",
    "pool-port": "PORT",
    "sync-port": "PORT",
    "iw-port": "PORT",
    "management": "PATH",
    "management-group": "NAME",
    "data-dir": "PATH",
    "accounts-dir": "PATH",
    "log-dir": "PATH",
    "notify": "PATH",
    "notify-timeout": "SECONDS",
    "redis": "managed|external",
    "redis-binary": "PATH",
    "redis-high": "HOST PORT",
    "redis-low": "HOST PORT",
    "redis-backup": "HOST PORT",
    "redis-password-file": "PATH",
    "metrics": "[ADDR] PORT",
}
POOL_USAGE = {"host": "NAME", "ip": "NAME ADDR", "app": "MODULE"}
REPEATABLE = frozenset({"keep-alive", "addr-map", "host", "ip", "app", "push-config"})
PATH_FIELDS = {
    "tls-certificate": "tls_certificate",
    "tls-key": "tls_key",
    "relay-control": "relay_control",
    "management": "management",
    "data-dir": "data_dir",
    "accounts-dir": "accounts_dir",
    "log-dir": "log_dir",
    "notify": "notify",
}
PORT_FIELDS = {"pool-port": "pool_port", "sync-port": "sync_port", "iw-port": "iw_port"}
REDIS_ENDPOINTS = {"redis-high": "high", "redis-low": "low", "redis-backup": "backup"}
SECTIONS = ("[GLOBAL]", "[POOL]")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_SECRET = re.compile(r"[A-Za-z0-9+/=_-]+\Z")

_grammar = LineGrammar(frozenset(GLOBAL_USAGE) | frozenset(POOL_USAGE), has_sections=True)


def check_name(ctx: Context, tok: Tok, what: str) -> str:
    if not _NAME.match(tok.value):
        raise ctx.error(f"bad {what}", tok, expected="letters, digits, '_', '-' or '.'")
    return tok.value


def check_path(ctx: Context, tok: Tok) -> str:
    if not tok.value or "\x00" in tok.value:
        raise ctx.error("bad path", tok, expected="a file system path")
    return tok.value


class _Builder:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.section: str | None = None
        self.seen_sections: dict[str, Tok] = {}
        self.seen: dict[str, Tok] = {}
        self.fields: dict[str, Any] = {}
        self.redis: dict[str, Any] = {}
        self.keep_alive: list[KeepAlive] = []
        self.addr_map: dict[str, tuple[Tok, AddressMap]] = {}
        self.hosts: dict[str, Tok] = {}
        self.ips: dict[str, tuple[Tok, str]] = {}
        self.ip_owner: dict[str, str] = {}
        self.features_tok: Tok | None = None
        self.warnings: list[str] = []

    def line(self, line: Line) -> None:
        ctx = self.ctx
        kw = line.keyword
        if line.section:
            if kw.value not in SECTIONS:
                raise ctx.error("unknown section", kw, expected="[GLOBAL] or [POOL]")
            if kw.value in self.seen_sections:
                first = self.seen_sections[kw.value]
                raise ctx.error(f"duplicate section (first on line {first.line})", kw)
            self.seen_sections[kw.value] = kw
            self.section = kw.value
            return
        name = kw.value
        if self.section is None:
            raise ctx.error(
                "directive before any section header", kw, expected="[GLOBAL] or [POOL] first"
            )
        usage = GLOBAL_USAGE if self.section == "[GLOBAL]" else POOL_USAGE
        if name not in usage:
            other = "[POOL]" if self.section == "[GLOBAL]" else "[GLOBAL]"
            raise ctx.error(
                f"directive belongs in the {other} section, not {self.section}",
                kw,
                expected=f"a {other} header before it",
            )
        if name not in REPEATABLE:
            if name in self.seen:
                raise ctx.error(f"duplicate directive (first on line {self.seen[name].line})", kw)
            self.seen[name] = kw
        args = Args(ctx, line, usage[name])
        getattr(self, "d_" + name.replace("-", "_"), self.d_path)(args, name)

    # [GLOBAL]

    def d_key(self, a: Args, name: str) -> None:
        (secret,) = a.exactly(["SECRET"])
        if not _SECRET.match(secret.value):
            raise self.ctx.error("bad shared secret", secret, expected="a base64 string")
        self.fields["key"] = secret.value

    def d_features(self, a: Args, name: str) -> None:
        features: list[str] = []
        for tok in a.between(0, None, ()):
            if tok.value not in FEATURES:
                raise self.ctx.error("unknown feature", tok, expected=" or ".join(FEATURES))
            if tok.value in features:
                raise self.ctx.error("feature listed twice", tok)
            features.append(tok.value)
        self.fields["features"] = tuple(features)
        self.features_tok = a.line.keyword

    def d_cps(self, a: Args, name: str) -> None:
        host, port, id_, secret = a.exactly(["HOST", "PORT", "ID", "SECRET"])
        if not secret.value:
            raise self.ctx.error("empty secret", secret, expected="the secret from Cryptify")
        self.fields["cps"] = Cps(
            check_host(self.ctx, host),
            check_port(self.ctx, port),
            check_name(self.ctx, id_, "CPS id"),
            secret.value,
        )

    def d_push_config(self, a: Args, name: str) -> None:
        service, option, value = a.exactly(["SERVICE", "OPTION", "VALUE"])
        if service.value not in ("apns", "cps"):
            raise self.ctx.error("unknown push service", service, expected="apns or cps")
        if option.value not in ("trust", "type") or (service.value, option.value) == (
            "cps",
            "type",
        ):
            raise self.ctx.error("unknown push option", option, expected="type or trust")
        # one line per service and option (the directive itself may repeat)
        field = f"{service.value}_{option.value}"
        if field in self.fields:
            raise self.ctx.error("duplicate push-config line", option)
        if option.value == "trust":
            # a CA file for the push server's or APNs' certificate (docs/push.md)
            self.fields[field] = value.value
            return
        if value.value not in APNS_TYPES:
            raise self.ctx.error("unknown apns type", value, expected=" or ".join(APNS_TYPES))
        self.fields["apns_type"] = value.value

    def d_keep_alive(self, a: Args, name: str) -> None:
        cidr, method, interval = a.exactly(["CIDR", "METHOD", "MS"])
        if method.value not in KEEP_ALIVE_METHODS:
            raise self.ctx.error("unknown keep-alive method", method, expected="tcp or ws")
        self.keep_alive.append(
            KeepAlive(
                check_network(self.ctx, cidr),
                method.value,
                check_int(self.ctx, interval, "interval", 1, MAX_KEEP_ALIVE_MS),
            )
        )

    def d_client_max_message(self, a: Args, name: str) -> None:
        (tok,) = a.exactly(["BYTES"])
        self.fields["client_max_message"] = check_int(self.ctx, tok, "size", 1024, 16 * 2**20)

    def d_client_attach_timeout(self, a: Args, name: str) -> None:
        (tok,) = a.exactly(["SECONDS"])
        self.fields["client_attach_timeout"] = float(check_int(self.ctx, tok, "timeout", 1, 600))

    def d_client_max_unattached_per_address(self, a: Args, name: str) -> None:
        (tok,) = a.exactly(["N"])
        self.fields["client_max_unattached_per_address"] = check_int(
            self.ctx, tok, "count", 1, 1_000_000
        )

    def d_client_max_unattached(self, a: Args, name: str) -> None:
        (tok,) = a.exactly(["N"])
        self.fields["client_max_unattached"] = check_int(self.ctx, tok, "count", 1, 1_000_000)

    def d_client_max_handshakes(self, a: Args, name: str) -> None:
        (tok,) = a.exactly(["N"])
        self.fields["client_max_handshakes"] = check_int(self.ctx, tok, "count", 1, 1_000_000)

    def d_addr_map(self, a: Args, name: str) -> None:
        original, mapped = a.exactly(["IP", "IP"])
        entry = AddressMap(check_ip(self.ctx, original), check_ip(self.ctx, mapped))
        if entry.original in self.addr_map:
            first = self.addr_map[entry.original][0]
            raise self.ctx.error(f"address already mapped (first on line {first.line})", original)
        self.addr_map[entry.original] = (original, entry)

    def _endpoint(self, a: Args, listening: bool) -> Endpoint:
        host, port = a.exactly(["ADDR", "PORT"])
        return Endpoint(check_ip(self.ctx, host), check_port(self.ctx, port, listening))

    def d_listen(self, a: Args, name: str) -> None:
        self.fields["listen"] = self._endpoint(a, listening=True)

    def d_admin_listen(self, a: Args, name: str) -> None:
        self.fields["admin_listen"] = self._endpoint(a, listening=True)

    def d_relay(self, a: Args, name: str) -> None:
        self.fields["relay"] = self._endpoint(a, listening=True)

    def d_metrics(self, a: Args, name: str) -> None:
        toks = a.between(1, 2, ["PORT"])
        host = check_ip(self.ctx, toks[0]) if len(toks) == 2 else METRICS_HOST
        self.fields["metrics"] = Endpoint(host, check_port(self.ctx, toks[-1], listening=True))

    def d_path(self, a: Args, name: str) -> None:
        (path,) = a.exactly(["PATH"])
        self.fields[PATH_FIELDS[name]] = check_path(self.ctx, path)

    def d_pool_port(self, a: Args, name: str) -> None:
        (port,) = a.exactly(["PORT"])
        self.fields[PORT_FIELDS[name]] = check_port(self.ctx, port)

    d_sync_port = d_pool_port
    d_iw_port = d_pool_port

    def d_management_group(self, a: Args, name: str) -> None:
        (group,) = a.exactly(["NAME"])
        self.fields["management_group"] = check_name(self.ctx, group, "group name")

    def d_notify_timeout(self, a: Args, name: str) -> None:
        (tok,) = a.exactly(["SECONDS"])
        expected = f"a number of seconds, more than 0 and at most {MAX_NOTIFY_TIMEOUT_SECONDS:g}"
        if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", tok.value):
            raise self.ctx.error("bad timeout", tok, expected=expected)
        value = float(tok.value)
        if not 0 < value <= MAX_NOTIFY_TIMEOUT_SECONDS:
            raise self.ctx.error("timeout out of range", tok, expected=expected)
        self.fields["notify_timeout"] = value

    def d_redis(self, a: Args, name: str) -> None:
        (mode,) = a.exactly(["MODE"])
        if mode.value not in REDIS_MODES:
            raise self.ctx.error("unknown redis mode", mode, expected="managed or external")
        self.redis["mode"] = mode.value

    def d_redis_binary(self, a: Args, name: str) -> None:
        (path,) = a.exactly(["PATH"])
        self.redis["binary"] = check_path(self.ctx, path)

    def d_redis_high(self, a: Args, name: str) -> None:
        host, port = a.exactly(["HOST", "PORT"])
        self.redis[REDIS_ENDPOINTS[name]] = Endpoint(
            check_host(self.ctx, host), check_port(self.ctx, port)
        )

    d_redis_low = d_redis_high
    d_redis_backup = d_redis_high

    def d_redis_password_file(self, a: Args, name: str) -> None:
        (path,) = a.exactly(["PATH"])
        self.redis["password_file"] = check_path(self.ctx, path)

    # [POOL]

    def d_host(self, a: Args, name: str) -> None:
        (tok,) = a.exactly(["NAME"])
        host = check_name(self.ctx, tok, "host name")
        if host in self.hosts:
            first = self.hosts[host]
            raise self.ctx.error(f"duplicate host (first on line {first.line})", tok)
        self.hosts[host] = tok

    def d_app(self, a: Args, name: str) -> None:
        """
        C{app MODULE} lines of a host section, from before 4.11.0: no longer
        needed (every instance runs every module), accepted with a warning.
        """
        (module,) = a.between(1, None, ["MODULE"])[:1]
        warning = self.ctx.error(
            "warning: 'app' lines are no longer needed since CRS 4.11.0; ignored",
            a.line.keyword,
            text=f"app {module.value}",
        )
        self.warnings.append(str(warning))

    def d_ip(self, a: Args, name: str) -> None:
        tok, addr = a.exactly(["NAME", "ADDR"])
        host = check_name(self.ctx, tok, "host name")
        ip = check_ip(self.ctx, addr)
        if host in self.ips:
            first = self.ips[host][0]
            raise self.ctx.error(f"host already has an ip (line {first.line})", tok)
        if ip in self.ip_owner:
            raise self.ctx.error(f"address already used by host {self.ip_owner[ip]}", addr)
        self.ips[host] = (tok, ip)
        self.ip_owner[ip] = host

    def finish(self) -> CrsConfig:
        ctx = self.ctx
        for host, (tok, _) in self.ips.items():
            if host not in self.hosts:
                raise ctx.error("ip for a host that is not declared", tok, expected=f"host {host}")
        for host, tok in self.hosts.items():
            if host not in self.ips:
                raise ctx.error("host has no ip line", tok, expected=f"ip {host} ADDR")
        redis = RedisSettings(**self.redis)
        if redis.mode == "managed" and "redis-password-file" in self.seen:
            raise ctx.error(
                "redis-password-file applies only to external Redis",
                self.seen["redis-password-file"],
                expected="redis external",
            )
        if redis.mode == "external" and "redis-binary" in self.seen:
            raise ctx.error(
                "redis-binary applies only to managed Redis",
                self.seen["redis-binary"],
                expected="redis managed",
            )
        glob = CrsGlobal(
            keep_alive=tuple(self.keep_alive),
            addr_map=tuple(e for _, e in self.addr_map.values()),
            redis=redis,
            **self.fields,
        )
        if glob.push and glob.cps is None:
            raise ctx.error(
                "feature push needs a cps line",
                self.features_tok,
                expected="cps HOST PORT ID SECRET",
            )
        pool = Pool(tuple(PoolHost(h, self.ips[h][1]) for h in self.hosts))
        return CrsConfig(glob, pool, tuple(self.warnings))


def parse_crs_config(text: str | bytes, filename: str = "<string>") -> CrsConfig:
    """
    Parse the text of a C{crs.conf}.

    @raise ConfigError: if it is not valid.
    """
    text = decode(text, filename)
    lines = parse_lines(_grammar, text, filename)
    builder = _Builder(Context(filename, text))
    for line in lines:
        builder.line(line)
    return builder.finish()


def load_crs_config(path: str | Path) -> CrsConfig:
    """
    Read and parse a C{crs.conf} file.
    """
    return parse_crs_config(read_config_file(path), str(path))


def value(text: str) -> str:
    """
    A value as written in a line-oriented file: quoted when it must be.
    """
    if text and re.fullmatch(r"[^\s\"\#\x00-\x1f\x7f\[]+", text):
        return text
    return quote(text)


def seconds(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def render_crs_config(cfg: CrsConfig) -> str:
    """
    Write C{cfg} as C{crs.conf} text that parses back to an equal object.
    """
    g = cfg.global_
    d = CrsGlobal()
    out = ["[GLOBAL]"]
    if g.key is not None:
        out.append(f"key {g.key}")
    out.append(" ".join(["features", *g.features]))
    if g.cps is not None:
        c = g.cps
        out.append(f"cps {c.host} {c.port} {c.id} {value(c.secret)}")
    if g.apns_type != d.apns_type:
        out.append(f"push-config apns type {g.apns_type}")
    for service, trust in (("cps", g.cps_trust), ("apns", g.apns_trust)):
        if trust is not None:
            out.append(f"push-config {service} trust {value(trust)}")
    out.extend(f"keep-alive {k.network} {k.method} {k.interval_ms}" for k in g.keep_alive)
    for directive in (
        "client-max-message",
        "client-attach-timeout",
        "client-max-unattached-per-address",
        "client-max-unattached",
        "client-max-handshakes",
    ):
        field = directive.replace("-", "_")
        if getattr(g, field) != getattr(d, field):
            out.append(f"{directive} {getattr(g, field):g}")
    out.extend(f"addr-map {m.original} {m.mapped}" for m in g.addr_map)
    out.append(f"listen {g.listen.host} {g.listen.port}")
    if g.tls_certificate is not None:
        out.append(f"tls-certificate {value(g.tls_certificate)}")
    if g.tls_key is not None:
        out.append(f"tls-key {value(g.tls_key)}")
    if g.admin_listen is not None:
        out.append(f"admin-listen {g.admin_listen.host} {g.admin_listen.port}")
    out.append(f"relay {g.relay.host} {g.relay.port}")
    out.append(f"relay-control {value(g.relay_control)}")
    out.append(f"pool-port {g.pool_port}")
    out.append(f"sync-port {g.sync_port}")
    out.append(f"iw-port {g.iw_port}")
    out.append(f"management {value(g.management)}")
    out.append(f"management-group {g.management_group}")
    out.append(f"data-dir {value(g.data_dir)}")
    out.append(f"accounts-dir {value(g.accounts_dir)}")
    out.append(f"log-dir {value(g.log_dir)}")
    out.append(f"notify {value(g.notify)}")
    out.append(f"notify-timeout {seconds(g.notify_timeout)}")
    r = g.redis
    out.append(f"redis {r.mode}")
    if r.mode == "managed":
        out.append(f"redis-binary {value(r.binary)}")
    out.append(f"redis-high {r.high.host} {r.high.port}")
    out.append(f"redis-low {r.low.host} {r.low.port}")
    out.append(f"redis-backup {r.backup.host} {r.backup.port}")
    if r.password_file is not None:
        out.append(f"redis-password-file {value(r.password_file)}")
    if g.metrics is not None:
        out.append(f"metrics {g.metrics.host} {g.metrics.port}")
    out.append("")
    out.append("[POOL]")
    out.extend(f"host {h.name}" for h in cfg.pool.hosts)
    out.extend(f"ip {h.name} {h.ip}" for h in cfg.pool.hosts)
    return "\n".join(out) + "\n"

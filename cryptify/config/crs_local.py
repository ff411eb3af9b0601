"""
C{crs-local.conf}: what differs between the instances of a pool.

C{crsname NAME} says which C{host} of C{crs.conf}'s C{[POOL]} this
instance is; C{db-backup} says what it does with its peer's durable store;
C{workers N|auto} how many worker processes serve its clients.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from ._base import ConfigError, Context, Tok, check_ip, check_port, decode, read_config_file
from ._lines import Args, LineGrammar, parse_lines
from .crs import check_name
from .crs_model import METRICS_HOST, CrsConfig, Endpoint, PoolHost

DB_BACKUP_MODES = ("none", "replicate-from-peer", "read-from")
#: C{workers auto}: one worker process per core of the host.
AUTO_WORKERS = 0
#: The most worker processes one instance runs.
MAX_WORKERS = 256
USAGE = {
    "crsname": "NAME",
    "db-backup": "none|replicate-from-peer|read-from",
    "metrics": "[ADDR] PORT",
    "workers": "N|auto",
}

_grammar = LineGrammar(frozenset(USAGE), has_sections=False)


@attrs.frozen
class CrsLocalConfig:
    """
    All of C{crs-local.conf}.

    C{crsname} of C{None}: a single instance outside any pool.
    C{db_backup}: C{none}, C{replicate-from-peer} (keep a replica of the
    peer's durable store) or C{read-from} (serve the peer's stored
    messages from that replica, the peer being gone for good).
    C{metrics}: this instance's Prometheus endpoint, in place of
    C{crs.conf}'s (for an address that differs between instances).
    C{workers}: how many worker processes serve the client port (1: the
    instance's one process serves it; L{AUTO_WORKERS}, the default: one
    per core).
    """

    crsname: str | None = None
    db_backup: str = "none"
    metrics: Endpoint | None = None
    workers: int = AUTO_WORKERS


def parse_crs_local_config(text: str | bytes, filename: str = "<string>") -> CrsLocalConfig:
    """
    Parse the text of a C{crs-local.conf}.

    @raise ConfigError: if it is not valid.
    """
    text = decode(text, filename)
    ctx = Context(filename, text)
    config = CrsLocalConfig()
    seen: dict[str, int] = {}
    for line in parse_lines(_grammar, text, filename):
        kw = line.keyword
        if kw.value in seen:
            raise ctx.error(f"duplicate directive (first on line {seen[kw.value]})", kw)
        seen[kw.value] = kw.line
        args = Args(ctx, line, USAGE[kw.value])
        if kw.value == "crsname":
            (name,) = args.exactly(["NAME"])
            config = attrs.evolve(config, crsname=check_name(ctx, name, "instance name"))
        elif kw.value == "metrics":
            toks = args.between(1, 2, ["PORT"])
            host = check_ip(ctx, toks[0]) if len(toks) == 2 else METRICS_HOST
            config = attrs.evolve(
                config, metrics=Endpoint(host, check_port(ctx, toks[-1], listening=True))
            )
        elif kw.value == "workers":
            (count,) = args.exactly(["N"])
            config = attrs.evolve(config, workers=_workers(ctx, count))
        else:
            (mode,) = args.exactly(["MODE"])
            if mode.value not in DB_BACKUP_MODES:
                raise ctx.error("unknown db-backup mode", mode, expected=", ".join(DB_BACKUP_MODES))
            config = attrs.evolve(config, db_backup=mode.value)
    return config


def _workers(ctx: Context, token: Tok) -> int:
    """C{workers N|auto}: 1..L{MAX_WORKERS}, or L{AUTO_WORKERS}."""
    text = token.value
    if text == "auto":
        return AUTO_WORKERS
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ctx.error("workers must be auto or a number", token, expected=f"1-{MAX_WORKERS}")
    return int(text)


def worker_count(cfg: CrsLocalConfig, cores: int | None = None) -> int:
    """How many worker processes C{cfg} asks for (C{auto}: C{cores}, the
    host's cores when not given)."""
    if cfg.workers != AUTO_WORKERS:
        return cfg.workers
    return max(1, cores if cores is not None else (os.cpu_count() or 1))


def load_crs_local_config(path: str | Path) -> CrsLocalConfig:
    """
    Read and parse a C{crs-local.conf} file.
    """
    return parse_crs_local_config(read_config_file(path), str(path))


def render_crs_local_config(cfg: CrsLocalConfig) -> str:
    """
    Write C{cfg} as C{crs-local.conf} text.
    """
    out = []
    if cfg.crsname is not None:
        out.append(f"crsname {cfg.crsname}")
    out.append(f"db-backup {cfg.db_backup}")
    if cfg.metrics is not None:
        out.append(f"metrics {cfg.metrics.host} {cfg.metrics.port}")
    if cfg.workers != AUTO_WORKERS:
        out.append(f"workers {cfg.workers}")
    return "\n".join(out) + "\n"


def pool_host_for(
    crs: CrsConfig, local: CrsLocalConfig, local_filename: str = "crs-local.conf"
) -> PoolHost | None:
    """
    This instance's entry in the pool, from C{crsname}.

    @return: C{None} for a single instance (no C{crsname}, empty pool).
    @raise ConfigError: if C{crsname} is not a host of the pool, or the
        pool has hosts and C{crsname} is missing.
    """
    names = ", ".join(crs.pool.names)
    if local.crsname is None:
        if crs.pool.hosts:
            raise ConfigError("crsname missing", local_filename, expected=f"crsname {names}")
        return None
    host = crs.pool.host(local.crsname)
    if host is None:
        raise ConfigError(
            "crsname is not a host of the pool in crs.conf",
            local_filename,
            text=local.crsname,
            expected=names or "a [POOL] host in crs.conf",
        )
    return host

"""
C{iw-crs.conf}: the inter-working CRS instances this CRS trusts.

One line per instance, C{iw-crs IP SECRET [comment "TEXT"]}. Links to and
from it are TLS-PSK with C{SECRET} as the key, and an incoming link is
accepted only from C{IP}.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from ._base import Context, check_ip, decode, read_config_file
from ._lines import Args, LineGrammar, parse_lines
from .crs import value

USAGE = {"iw-crs": 'IP SECRET [comment "TEXT"]'}
_SECRET = re.compile(r"[A-Za-z0-9]+\Z")

_grammar = LineGrammar(frozenset(USAGE), has_sections=False)


@attrs.frozen
class IwCrs:
    """
    One inter-working CRS instance.
    """

    ip: str
    secret: str
    comment: str | None = None


@attrs.frozen
class IwCrsConfig:
    """
    All of C{iw-crs.conf}, in file order.
    """

    instances: tuple[IwCrs, ...] = ()

    def get(self, ip: str) -> IwCrs | None:
        """
        The instance configured for source address C{ip}, if any.
        """
        for instance in self.instances:
            if instance.ip == ip:
                return instance
        return None


def parse_iw_crs_config(text: str | bytes, filename: str = "<string>") -> IwCrsConfig:
    """
    Parse the text of an C{iw-crs.conf}.

    @raise ConfigError: if it is not valid.
    """
    text = decode(text, filename)
    ctx = Context(filename, text)
    instances: list[IwCrs] = []
    seen: dict[str, int] = {}
    for line in parse_lines(_grammar, text, filename):
        args = Args(ctx, line, USAGE["iw-crs"])
        toks = args.between(2, 4, ["IP", "SECRET", "comment", "TEXT"])
        ip = check_ip(ctx, toks[0])
        if ip in seen:
            raise ctx.error(f"duplicate iw-crs address (first on line {seen[ip]})", toks[0])
        seen[ip] = toks[0].line
        if not _SECRET.match(toks[1].value):
            raise ctx.error("bad shared secret", toks[1], expected="letters and digits only")
        comment = None
        if len(toks) > 2:
            if toks[2].value != "comment" or toks[2].quoted:
                raise ctx.error("unexpected value", toks[2], expected=args.usage)
            if len(toks) < 4:
                args.exactly(["IP", "SECRET", "comment", "TEXT"])
            comment = toks[3].value
        instances.append(IwCrs(ip, toks[1].value, comment))
    return IwCrsConfig(tuple(instances))


def load_iw_crs_config(path: str | Path) -> IwCrsConfig:
    """
    Read and parse an C{iw-crs.conf} file.
    """
    return parse_iw_crs_config(read_config_file(path), str(path))


def render_iw_crs_config(cfg: IwCrsConfig) -> str:
    """
    Write C{cfg} as C{iw-crs.conf} text.
    """
    out = []
    for i in cfg.instances:
        line = f"iw-crs {i.ip} {i.secret}"
        if i.comment is not None:
            line += f" comment {value(i.comment)}"
        out.append(line)
    return "".join(s + "\n" for s in out)

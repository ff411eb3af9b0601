"""
Configuration files of the CRS and the CIG: PLY grammars that parse each
file kind into frozen attrs objects, and renderers that write them back.

Parsing an empty file gives the defaults; every error is a L{ConfigError}
naming file, line and column. See C{docs/configuration.md}.
"""

from ._base import ConfigError
from .cig import load_cig_config, parse_cig_config
from .cig_model import (
    AddressOverride,
    CigConfig,
    CrsLink,
    Interfaces,
    Logging,
    Mailbox,
    Mailboxes,
    Management,
    MapEntry,
    PortRange,
    RelayLink,
    SipInterface,
    TelInterface,
    TranslateMap,
    TranslateRule,
    UriMap,
    render_cig_config,
)
from .crs import load_crs_config, parse_crs_config, render_crs_config
from .crs_local import (
    CrsLocalConfig,
    load_crs_local_config,
    parse_crs_local_config,
    pool_host_for,
    render_crs_local_config,
)
from .crs_model import (
    AddressMap,
    Cps,
    CrsConfig,
    CrsGlobal,
    Endpoint,
    KeepAlive,
    Pool,
    PoolHost,
    RedisSettings,
)
from .iw_crs import (
    IwCrs,
    IwCrsConfig,
    load_iw_crs_config,
    parse_iw_crs_config,
    render_iw_crs_config,
)
from .patterns import PatternError, expand_pattern, match_pattern

__all__ = [
    "AddressMap",
    "AddressOverride",
    "CigConfig",
    "ConfigError",
    "Cps",
    "CrsConfig",
    "CrsGlobal",
    "CrsLink",
    "CrsLocalConfig",
    "Endpoint",
    "Interfaces",
    "IwCrs",
    "IwCrsConfig",
    "KeepAlive",
    "Logging",
    "Mailbox",
    "Mailboxes",
    "Management",
    "MapEntry",
    "PatternError",
    "Pool",
    "PoolHost",
    "PortRange",
    "RedisSettings",
    "RelayLink",
    "SipInterface",
    "TelInterface",
    "TranslateMap",
    "TranslateRule",
    "UriMap",
    "expand_pattern",
    "load_cig_config",
    "load_crs_config",
    "load_crs_local_config",
    "load_iw_crs_config",
    "match_pattern",
    "parse_cig_config",
    "parse_crs_config",
    "parse_crs_local_config",
    "parse_iw_crs_config",
    "pool_host_for",
    "render_cig_config",
    "render_crs_config",
    "render_crs_local_config",
    "render_iw_crs_config",
]

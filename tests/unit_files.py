"""Reading the systemd units shipped in packaging/ (the packaging and reload
tests both check them)."""

from __future__ import annotations

import os

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(TOP, "etc", "systemd")


def service_settings(name: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    section = ""
    with open(os.path.join(UNITS, name + ".service")) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                settings[key] = value
    return settings

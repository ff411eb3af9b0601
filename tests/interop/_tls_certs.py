"""Test certificates made with the openssl command: CAs and leaf certificates."""

from __future__ import annotations

import os
import subprocess


def _run(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)


def make_ca(directory: str, name: str) -> str:
    """A self-signed CA in DIR/NAME.crt and DIR/NAME.key; returns the certificate's path."""
    key, crt = (os.path.join(directory, f"{name}.{ext}") for ext in ("key", "crt"))
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    os.chmod(key, 0o600)
    return crt


def make_leaf(directory: str, name: str, ca: str, alt_names: str) -> tuple[str, str]:
    """
    A certificate for C{alt_names} (e.g. C{DNS:pbx.test,IP:127.0.0.1})
    signed by CA C{ca} (as made by L{make_ca}); returns (certificate, key)
    paths, the key 0600.
    """
    key, csr, crt = (os.path.join(directory, f"{name}.{ext}") for ext in ("key", "csr", "crt"))
    ca_key = ca[: -len(".crt")] + ".key"
    ext = os.path.join(directory, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n")
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return crt, key

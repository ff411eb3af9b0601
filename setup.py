"""Everything about the package is in setup.cfg and pyproject.toml; this
file only names what is compiled when the package is built or installed:
the C extensions cffi builds (SAKKE decapsulation, the P-256 multi-scalar
multiplication of ECCSI verification, our libopus binding, the CIG bridge's
packet path over libsrtp), and the CRS relay's
eBPF program (``cryptify/crs/relay/bpf/relay.bpf.c`` -> ``relay.bpf.o``,
with clang and libbpf's headers; skipped, with a note, where they are
missing: the relay then forwards in userspace only)."""

import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

BPF_SOURCE = os.path.join("cryptify", "crs", "relay", "bpf", "relay.bpf.c")
BPF_OBJECT = os.path.join("cryptify", "crs", "relay", "relay.bpf.o")


def build_bpf(target: str) -> None:
    clang = shutil.which("clang")
    if clang is None or not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        print("relay.bpf.o not built: needs clang and libbpf-dev", file=sys.stderr)
        return
    machine = os.uname().machine
    multiarch = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine)
    includes = [f"-I/usr/include/{multiarch}"] if multiarch else []
    os.makedirs(os.path.dirname(target), exist_ok=True)
    cmd = [clang, "-O2", "-g", "-Wall", "-target", "bpf", *includes, "-c", BPF_SOURCE, "-o", target]
    if subprocess.run(cmd).returncode != 0:
        print("relay.bpf.o not built: clang failed", file=sys.stderr)


class BuildExt(build_ext):
    def run(self) -> None:
        super().run()
        build_bpf(BPF_OBJECT if self.inplace else os.path.join(self.build_lib, BPF_OBJECT))


setup(
    cffi_modules=[
        "cryptify/crypto/_pairing_build.py:ffibuilder",
        "cryptify/crypto/_p256_build.py:ffibuilder",
        "cryptify/protocols/_opus_build.py:ffibuilder",
        "cryptify/cig/relay/_cbridge_build.py:ffibuilder",
    ],
    cmdclass={"build_ext": BuildExt},
)

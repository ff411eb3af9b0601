"""Cryptify: rendezvous server (CRS), interconnect gateway (CIG) and tools."""

__version__ = "0.1.0"

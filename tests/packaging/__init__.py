"""Package builds proven on a fresh Debian root (`make test-packages`)."""

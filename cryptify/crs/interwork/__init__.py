"""Inter-working with other operators' CRS pools (port 8080, TLS-PSK): the link."""

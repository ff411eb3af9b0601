"""The ``crs_relay`` program: the media relay process and its control socket."""

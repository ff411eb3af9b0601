"""The CIG's operator side: ``status``/``show`` state, the management responders, ``cig-cli``."""

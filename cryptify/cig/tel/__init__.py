"""The CIG's secure (tel) side, run by ``twistd cig``: the UIF and the secure calls."""

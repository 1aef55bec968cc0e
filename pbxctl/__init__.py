"""The ``pbxctl`` command line: one module per command group, wired in ``cli``."""

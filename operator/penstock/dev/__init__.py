"""Local developer commands: ``penstock dev`` (run a Pipeline locally) and ``penstock analyze``."""

"""Runtime errors: one line a user can act on."""


class RunError(Exception):
    """The bundle cannot be run as asked on this machine."""


class InputError(RunError):
    """Inputs do not match the bundle's input specs (the message lists the expected ones)."""

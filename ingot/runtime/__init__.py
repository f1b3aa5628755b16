"""Load a bundle, pick the target for this machine, run it. Never imports builder/ or quant/."""

from ingot.runtime.errors import InputError, RunError
from ingot.runtime.model import Model, load

__all__ = ["InputError", "Model", "RunError", "load"]

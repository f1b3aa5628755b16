"""TensorRT runtime errors: one line a user can act on."""

from ingot.runtime.errors import RunError


class IncompatiblePlanError(RunError):
    """This machine cannot load the plan (its GPU, its TensorRT, a missing package); said before
    TensorRT sees the plan, instead of TensorRT's Error Code 6 (arch) or 1 (version)."""


class DeviceError(RunError):
    """A CUDA or TensorRT call failed while loading or running a plan (out of memory, a failed launch)."""

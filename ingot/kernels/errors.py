"""Kernel errors: one line a user can act on."""


class KernelError(Exception):
    """The paged-attention kernels cannot run or compile as asked (inputs, device, toolchain)."""

"""Check feeds against the manifest's input specs before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ingot.plans import TensorSpec
from ingot.runtime.errors import InputError

NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


def expected(specs: list[TensorSpec]) -> str:
    return "expected inputs: " + "; ".join(s.describe() for s in specs)


def check_feeds(specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> None:
    names = {s.name for s in specs}
    unknown, missing = sorted(set(feeds) - names), [s.name for s in specs if s.name not in feeds]
    if unknown or missing:
        what = ", ".join([*(f"unknown input {n!r}" for n in unknown), *(f"missing input {n!r}" for n in missing)])
        raise InputError(f"{what}; {expected(specs)}")
    sizes: dict[str, tuple[int, str]] = {}
    for spec in specs:
        arr = feeds[spec.name]
        if str(arr.dtype) != spec.dtype:
            raise InputError(f"input {spec.name!r} has dtype {arr.dtype}; {expected(specs)}")
        if arr.ndim != len(spec.shape):
            raise InputError(f"input {spec.name!r} has shape {list(arr.shape)} (rank {arr.ndim}); {expected(specs)}")
        for axis, (n, dim) in enumerate(zip(arr.shape, spec.shape)):
            if isinstance(dim, int):
                if n != dim:
                    raise InputError(f"input {spec.name!r} has size {n} on axis {axis}, needs {dim}; {expected(specs)}")
                continue
            if not dim.min <= n <= dim.max:
                raise InputError(
                    f"input {spec.name!r} has size {n} on axis {axis} ({dim.name}), outside {dim.min}..{dim.max}; "
                    f"{expected(specs)}"
                )
            seen = sizes.setdefault(dim.name, (n, spec.name))
            if seen[0] != n:
                raise InputError(
                    f"dim {dim.name} is {seen[0]} in {seen[1]!r} but {n} in {spec.name!r}; {expected(specs)}"
                )


def load_npy(text: str) -> tuple[str, np.ndarray]:
    """`NAME=FILE.npy` from the command line; no pickle."""
    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise InputError(f"--input {text!r}: expected NAME=FILE.npy")
    path = Path(file)
    if not path.is_file():
        raise InputError(f"--input {name}: file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:  # np.load would try pickle, and blame allow_pickle
        what = "an .npz archive" if magic.startswith(b"PK") else "not a .npy array"
        raise InputError(f"--input {name}: {path} is {what} (save one array with numpy.save)")
    try:
        return name, np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array: pickled Python objects, never loaded
            raise InputError(f"--input {name}: {path} holds Python objects, not numbers") from None
        raise InputError(f"--input {name}: cannot read {path} as .npy: {str(e).splitlines()[0]}") from e
    except OSError as e:
        raise InputError(f"--input {name}: cannot read {path} as .npy: {str(e).splitlines()[0]}") from e

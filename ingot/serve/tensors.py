"""KServe v2 tensors ⇄ numpy: typed `contents` or `raw_input_contents` in, raw contents out.

A raw tensor is its elements' little-endian bytes, row-major; a BYTES element is
`<u32 little-endian length><bytes>`. Every size is checked against the declared shape, so a
request whose bytes do not match its shape is refused with one line, never read past its end.
"""

from __future__ import annotations

import struct

import numpy as np

from ingot.serve.errors import InvalidArgument

# KServe v2 datatype ⇄ numpy dtype (BYTES: object arrays of bytes)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES = {str(d): name for name, d in DATATYPES.items() if name != "BYTES"}

# typed contents field of each datatype (FP16 and BF16 go raw only)
_CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def datatype(dtype: str | np.dtype) -> str:
    """The KServe name of a numpy dtype (manifest dtypes are numpy names: float32, int64)."""
    return _NAMES[str(np.dtype(dtype))]


def decode(name: str, dt: str, shape: list[int], raw: bytes | None, contents) -> np.ndarray:
    """One request input as an array of `shape`; raises InvalidArgument on any mismatch."""
    if dt not in DATATYPES:
        raise InvalidArgument(f"input {name!r}: unknown datatype {dt!r} (one of {', '.join(DATATYPES)})")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {name!r}: negative dimension in shape {shape}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > 1 << 31:
        raise InvalidArgument(f"input {name!r}: shape {shape} has too many elements")
    if raw is not None:
        return _from_raw(name, dt, shape, count, raw)
    if dt not in _CONTENTS:
        raise InvalidArgument(f"input {name!r}: {dt} must be sent in raw_input_contents")
    values = list(getattr(contents, _CONTENTS[dt])) if contents is not None else []
    if len(values) != count:
        raise InvalidArgument(f"input {name!r}: {len(values)} values in contents, shape {shape} needs {count}")
    if dt == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = values
        return arr.reshape(shape)
    try:
        return np.array(values, dtype=DATATYPES[dt]).reshape(shape)
    except OverflowError as e:
        raise InvalidArgument(f"input {name!r}: a value does not fit {dt}") from e


def _from_raw(name: str, dt: str, shape: list[int], count: int, raw: bytes) -> np.ndarray:
    if dt == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidArgument(f"input {name!r}: truncated BYTES element length at byte {pos}")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise InvalidArgument(f"input {name!r}: BYTES element of {n} bytes runs past the data")
            items.append(raw[pos + 4: pos + 4 + n])
            pos += 4 + n
        if len(items) != count:
            raise InvalidArgument(f"input {name!r}: {len(items)} BYTES elements, shape {shape} needs {count}")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = DATATYPES[dt]
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(f"input {name!r}: {len(raw)} bytes, shape {shape} of {dt} needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def encode(arr: np.ndarray) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of an output array."""
    if arr.dtype == object or arr.dtype.kind in "SU":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1)]
        return "BYTES", list(arr.shape), b"".join(struct.pack("<I", len(b)) + b for b in items)
    return datatype(arr.dtype), list(arr.shape), np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def text_of(name: str, arr: np.ndarray) -> list[str]:
    """A BYTES input as UTF-8 strings."""
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"input {name!r}: not UTF-8 text") from e

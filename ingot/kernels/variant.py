"""`Variant`: what a paged-attention kernel is specialized on, and the tile sizes it is launched with.

A compiled kernel bakes in the attention's constants (head counts and dims, block size, scale,
sliding window, softcap, fp8 scales) and the element types of its tensors; the pool's number of
blocks, the batch and its lengths stay runtime values. The same record keys the JIT launches
(ingot.kernels.paged), the ahead-of-time compiles (aot.py) and the plugin's manifest entries.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_DTYPES = ("float16", "bfloat16", "float32")
KV_DTYPES = (*FLOAT_DTYPES, "float8_e4m3fn")
INDEX_DTYPES = ("int32", "int64")
# torch dtype names -> triton signature types
TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float8_e4m3fn": "fp8e4nv",
                "int32": "i32", "int64": "i64"}


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class Variant:
    """One specialization of the kernels: an ingot.PagedAttention node's attributes and tensor types."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    scale: float
    dtype: str = "float16"  # query, key, value and the output
    kv_dtype: str = "float16"  # the pool
    index_dtype: str = "int64"  # slot_mapping, block_tables, context_lens, query_start_loc
    sliding_window: int = 0  # tokens a query attends, itself included (0: the whole context)
    softcap: float = 0.0  # tanh soft-capping of the logits (0: none)
    k_scale: float = 1.0  # fp8 pool: stored = key / k_scale
    v_scale: float = 1.0

    def __post_init__(self):
        assert self.num_heads % self.num_kv_heads == 0, (self.num_heads, self.num_kv_heads)
        assert self.dtype in FLOAT_DTYPES and self.kv_dtype in KV_DTYPES and self.index_dtype in INDEX_DTYPES, self
        assert self.head_dim >= 1 and self.block_size >= 1 and self.sliding_window >= 0 and self.softcap >= 0, self

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    @property
    def key(self) -> str:
        """The manifest's `variant` text: every field, in a fixed order."""
        return (f"heads={self.num_heads}/{self.num_kv_heads},head_dim={self.head_dim},block_size={self.block_size},"
                f"dtype={self.dtype},kv={self.kv_dtype},index={self.index_dtype},scale={self.scale!r},"
                f"window={self.sliding_window},softcap={self.softcap!r},k_scale={self.k_scale!r},"
                f"v_scale={self.v_scale!r}")

    def constants(self) -> dict[str, object]:
        """The constexprs every attention kernel shares."""
        return {"NUM_HEADS": self.num_heads, "NUM_KV_HEADS": self.num_kv_heads, "HEAD_DIM": self.head_dim,
                "BLOCK_SIZE": self.block_size, "SCALE": float(self.scale), "SLIDING_WINDOW": self.sliding_window,
                "SOFTCAP": float(self.softcap), "K_SCALE": float(self.k_scale), "V_SCALE": float(self.v_scale)}


@dataclass(frozen=True)
class Tiles:
    """Tile sizes: rows of a program are query heads (x tokens for prefill), padded for tl.dot (>= 16)."""

    d_pad: int  # head_dim rounded up to a power of two (>= 16)
    group_pad: int  # decode/fused rows: the group, padded to >= 16
    block_n: int  # keys per inner step
    block_q: int  # prefill: tokens per program
    prefill_group_pad: int  # prefill: the group padded to a power of two (rows = block_q * this)
    seq_tile: int = 128  # sequences a program scans at a time to find its own

    @classmethod
    def of(cls, v: Variant) -> Tiles:
        d_pad = max(16, next_pow2(v.head_dim))
        group = next_pow2(v.group)
        rows = 64 if d_pad <= 128 else 32  # prefill rows per program: fewer for wide heads (registers)
        return cls(d_pad=d_pad, group_pad=max(16, group), block_n=64 if d_pad <= 128 else 32,
                   block_q=max(rows // group, 1), prefill_group_pad=group if rows // group >= 1 else max(16, group))


def kernel_constants(kernel: str, v: Variant, *, num_splits: int = 1) -> dict[str, object]:
    """The constexprs of `kernel` (a name of triton_kernels.KERNELS) for variant `v`: what the JIT
    launches (paged.py) and the ahead-of-time compiles (aot.py) both pass."""
    t = Tiles.of(v)
    if kernel == "write_kv":
        return {"NUM_KV_HEADS": v.num_kv_heads, "HEAD_DIM": v.head_dim, "BLOCK_SIZE": v.block_size,
                "K_SCALE": float(v.k_scale), "V_SCALE": float(v.v_scale), "KV_HEADS_PAD": next_pow2(v.num_kv_heads),
                "D_PAD": t.d_pad}
    if kernel == "merge":
        return {"NUM_HEADS": v.num_heads, "HEAD_DIM": v.head_dim, "SPLITS_PAD": next_pow2(num_splits), "D_PAD": t.d_pad}
    tiles = {"prefill": {"BLOCK_Q": t.block_q, "GROUP_PAD": t.prefill_group_pad, "SEQ_TILE": t.seq_tile},
             "decode": {"GROUP_PAD": t.group_pad, "SPLIT": num_splits > 1},
             "fused": {"GROUP_PAD": t.group_pad, "SEQ_TILE": t.seq_tile}}[kernel]
    return v.constants() | tiles | {"BLOCK_N": t.block_n, "D_PAD": t.d_pad}

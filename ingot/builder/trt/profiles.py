"""TensorRT optimization profiles: (name, min, opt, max) for every input of the plan, from the
manifest's build limits. Pure functions; TensorRT only receives their result.

Dense plans: each DynamicDim's [min, max] from the manifest, opt mid-range.

Paged LLM plans take the contract's inputs (ingot.builder.paged), bounded by the `llm` limits:

    input_ids, positions, slot_mapping   [T]      T in 1..max_num_tokens
    logits_indices                       [N]      N in 1..max_num_tokens (every row, for perplexity)
    block_tables                         [B, M]   B in 1..max_num_seqs, M in 1..blocks(max_model_len)
    context_lens                         [B]
    query_start_loc                      [B + 1]  2..max_num_seqs + 1
    key_cache.L, value_cache.L           [kv_heads, num_blocks, block_size, head_dim]

The KV pool's num_blocks is chosen at load time (--kv-cache-memory), so its range is as wide as
the plugin can address: 1..max_num_blocks(llm), the most blocks whose pool tensor for one layer
has fewer than 2^31 elements (the kernels index a layer's pool with 32-bit offsets), capped at
the export's 2^24. A profile's max costs no memory here: the pool is an input the runtime owns.
opt is what a serving step mostly is: decode of max_num_seqs sequences, one token each, with
half of max_model_len behind them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingot.builder.errors import BuildError
from ingot.plans import DynamicDim, TensorSpec
from ingot.plans import llm as names
from ingot.plans.llm import LLMInfo, blocks_needed

INT32_ELEMENTS = (1 << 31) - 1
EXPORT_MAX_BLOCKS = 1 << 24  # the num_blocks Dim of ingot.builder.paged.export_paged
UNBOUNDED = (1 << 31) - 1  # what ingot.builder.graph.io_specs records for a dim without a range


@dataclass(frozen=True)
class ProfileShape:
    """One input of one optimization profile: IOptimizationProfile.set_shape(name, min, opt, max)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        assert len(self.min) == len(self.opt) == len(self.max), self
        assert all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)), self


def dense_profiles(inputs: list[TensorSpec]) -> list[ProfileShape]:
    """The manifest's inputs as one profile: each dim's [min, max], opt mid-range."""
    return [_dense(spec) for spec in inputs]


def _dense(spec: TensorSpec) -> ProfileShape:
    for d in spec.shape:
        if isinstance(d, DynamicDim) and d.max >= UNBOUNDED:
            raise BuildError(f"input {spec.name}: dim {d.name} has no upper bound, which a TensorRT profile needs; "
                             f"pass --dim {d.name}=MIN:MAX")
    lo = tuple(d if isinstance(d, int) else d.min for d in spec.shape)
    hi = tuple(d if isinstance(d, int) else d.max for d in spec.shape)
    opt = tuple(a if a == b else max(a, (a + b) // 2) for a, b in zip(lo, hi))
    return ProfileShape(spec.name, lo, opt, hi)


def max_num_blocks(llm: LLMInfo) -> int:
    """The largest KV pool (blocks per layer) a paged plan takes: see the module docstring."""
    per_block = llm.num_kv_heads * llm.kv_block_size * llm.head_dim
    return min(EXPORT_MAX_BLOCKS, INT32_ELEMENTS // per_block)


def paged_profiles(llm: LLMInfo) -> list[ProfileShape]:
    """One profile over every input of a paged plan, in the contract's input order."""
    tokens = (1, min(llm.max_num_seqs, llm.max_num_tokens), llm.max_num_tokens)  # decode steps are the common case
    seqs = (1, min(llm.max_num_seqs, llm.max_num_tokens), llm.max_num_seqs)
    table = (1, max(1, blocks_needed(llm.max_model_len // 2, llm.kv_block_size)),
             blocks_needed(llm.max_model_len, llm.kv_block_size))
    top = max_num_blocks(llm)
    pool = (1, min(top, seqs[1] * table[1]), top)  # opt: the decode batch's blocks
    profiles = [
        _ranged(names.INPUT_IDS, tokens), _ranged(names.POSITIONS, tokens), _ranged(names.LOGITS_INDICES, tokens),
        _ranged(names.SLOT_MAPPING, tokens), _ranged(names.BLOCK_TABLES, seqs, table),
        _ranged(names.CONTEXT_LENS, seqs), _ranged(names.QUERY_START_LOC, tuple(n + 1 for n in seqs)),
    ]
    kv, block, dim = llm.num_kv_heads, llm.kv_block_size, llm.head_dim
    for cache in [*map(names.key_cache, range(llm.num_layers)), *map(names.value_cache, range(llm.num_layers))]:
        profiles.append(ProfileShape(cache, (kv, pool[0], block, dim), (kv, pool[1], block, dim),
                                     (kv, pool[2], block, dim)))
    return profiles


def _ranged(name: str, *dims: tuple[int, int, int]) -> ProfileShape:
    """A profile from one (min, opt, max) per dim."""
    return ProfileShape(name, tuple(d[0] for d in dims), tuple(d[1] for d in dims), tuple(d[2] for d in dims))

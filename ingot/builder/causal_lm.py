"""The build's causal-LM part: when a source becomes a paged plan, its limits, the dense
interface recorded in the manifest, and the check of the paged contract against torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ingot.builder.config import BuildConfig
from ingot.builder.errors import BuildError, VerificationError
from ingot.builder.loaded import LoadedModel
from ingot.plans import DynamicDim, TargetName, TensorSpec
from ingot.plans.llm import LLMInfo

if TYPE_CHECKING:
    import onnx

DEFAULT_MAX_MODEL_LEN = 2048


def paged_source(loaded: LoadedModel, cfg: BuildConfig, targets: list[TargetName]):
    """The Hugging Face model to build as a paged plan, or None (dense plan)."""
    hf = getattr(loaded.module, "model", None) if loaded.kind == "causal-lm" else None
    if cfg.layout == "dense" or hf is None:
        if cfg.layout == "paged":
            raise BuildError(f"--layout paged needs a Hugging Face causal LM (Llama, Mistral, Qwen2/3, Phi-3, Gemma 1/2/3); "
                             f"{loaded.source.name} is {loaded.kind}")
        return None
    from ingot.builder.families import FAMILIES, architecture

    arch, missing = architecture(hf), _missing_in(hf)
    if arch not in FAMILIES or missing:
        if cfg.layout == "paged":
            raise BuildError(f"--layout paged supports {', '.join(sorted(FAMILIES))} with rotary over whole heads "
                             f"and static rope scaling; {arch} {missing or 'is not one yet'}")
        return None
    return hf  # sm targets compile it with the PagedAttention plugin (ingot.builder.trt)


def _missing_in(hf) -> str | None:
    """What a model of a paged family uses that paged plans do not apply yet. Rope scaling is in
    the Hugging Face rotary module the plan runs (static: linear, llama3, yarn; dynamic NTK and
    longrope below the positions where their tables change, see rope_positions); rotary over part
    of a head, and a model that attends both ways, are not."""
    from ingot.builder.paged import rope_parameters, rope_type

    config = hf.config
    if getattr(config, "use_bidirectional_attention", False):
        return "attends both ways (an embedding model, not a generator)"
    partial = rope_parameters(config).get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    if float(partial or 1.0) != 1.0:
        return "needs rotary embeddings over part of each head"
    return None


def rope_positions(config) -> int | None:
    """The positions a plan may use where the rope scaling changes with the sequence length: past
    them transformers switches its tables mid-sequence. Dynamic NTK scales only past the model's
    max_position_embeddings (which limits every plan anyway); longrope switches to its long
    factors past original_max_position_embeddings. None: no such limit."""
    from ingot.builder.paged import rope_parameters, rope_type

    if rope_type(config) == "longrope":
        return int(rope_parameters(config).get("original_max_position_embeddings")
                   or getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings)
    return None


def unpaged_note(loaded: LoadedModel, cfg: BuildConfig) -> str | None:
    """Why a causal LM gets a dense plan only, for the build's output and the manifest's notes
    (None: not a causal LM, paged, a paged bundle as the source, or --layout dense asked for)."""
    from ingot.builder.families import FAMILIES, MISSING, architecture

    if loaded.kind != "causal-lm" or cfg.layout == "dense" or loaded.llm is not None:
        return None
    hf = getattr(loaded.module, "model", None)
    what = "generation (`ingot run --prompt`, completions in `ingot serve`) refuses it; --text, --input and `ingot eval` run it"
    paged = ", ".join(sorted(a.removesuffix("ForCausalLM") for a in FAMILIES))
    if hf is None:
        return f"no LLM plan: a paged plan needs a Hugging Face causal LM ({paged}); built a dense plan: {what}"
    arch = architecture(hf)
    if arch in FAMILIES:
        missing = _missing_in(hf)
        return None if missing is None else \
            f"no LLM plan: this {arch} {missing}, which paged plans do not apply yet; built a dense plan: {what}"
    missing = MISSING.get(arch, "an attention layout paged plans do not cover yet")
    return f"no LLM plan: {arch} needs {missing}, which paged plans do not have yet (they page {paged}); " \
           f"built a dense plan: {what}"


def llm_limits(cfg: BuildConfig, hf_model) -> dict[str, int]:
    model_max = getattr(hf_model.config, "max_position_embeddings", None) or DEFAULT_MAX_MODEL_LEN
    rope_max = rope_positions(hf_model.config)
    max_len = cfg.max_model_len or min(model_max, rope_max or model_max, DEFAULT_MAX_MODEL_LEN)
    if max_len > model_max:
        raise BuildError(f"--max-model-len {max_len}: the model has {model_max} positions")
    if rope_max is not None and max_len > rope_max:
        raise BuildError(f"--max-model-len {max_len}: past {rope_max} tokens this model's longrope scaling switches to "
                         f"its long factors mid-sequence, which paged plans do not apply yet; pass at most {rope_max}")
    return {"max_model_len": max_len, "max_num_tokens": cfg.max_num_tokens, "max_num_seqs": cfg.max_num_seqs,
            "kv_block_size": cfg.kv_block_size}


def dense_specs(loaded: LoadedModel, info: LLMInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The dense causal-LM view the runtime offers on the plan (Model.run, eval): [batch, sequence]."""
    batch = next(d for axes in loaded.dims.values() for a, d in axes.items() if a == 0)
    b = DynamicDim(name=batch.name, min=batch.min, max=batch.max)
    s = DynamicDim(name="sequence", min=1, max=info.max_model_len)
    inputs = [TensorSpec(name=name, dtype="int64", shape=[b, s]) for name in loaded.example]
    return inputs, [TensorSpec(name="logits", dtype="float32", shape=[b, s, info.vocab_size])]


def check_paged(run, hf_model, info: LLMInfo, atol: float, rtol: float) -> float:
    """Run the lowered plan and the torch reference of the contract on a step that reads past
    K/V from the cache (random pool, two sequences); max abs error of the logits."""
    import torch

    from ingot.builder.paged import PagedCausalLM, example_inputs
    from ingot.plans import llm as names
    from ingot.runtime.llm.batch import PackedBatch
    from ingot.runtime.llm.cpu_lowering import plan_feeds, run_calls, window_feeds

    wrapper = PagedCausalLM(hf_model).eval()
    ex = example_inputs(wrapper, info.kv_block_size)
    with torch.no_grad():
        ref = wrapper(**ex).double().numpy()
    batch = PackedBatch(**{k: ex[k].numpy() for k in ("input_ids", "positions", "slot_mapping", "logits_indices",
                                                      "query_start_loc", "context_lens", "block_tables")})
    caches = {}
    for layer, (k, v) in enumerate(zip(ex["key_caches"], ex["value_caches"])):
        caches[names.key_cache(layer)], caches[names.value_cache(layer)] = k.numpy(), v.numpy()
    logits = run_calls(batch, lambda sub: run(plan_feeds(sub) | window_feeds(sub, info, caches))[names.LOGITS])
    err = float(np.abs(logits - ref).max())
    if err > atol + rtol * float(np.abs(ref).max()):
        raise VerificationError(f"verification failed: the paged plan differs from torch by {err:.3g} on a step "
                                "reading the KV cache; pass --no-verify to build anyway")
    return err


def export(hf_model, cfg: BuildConfig) -> onnx.ModelProto:
    from ingot.builder.paged import export_paged

    return export_paged(hf_model, cfg.opset, cfg.kv_block_size)


def info(hf_model, cfg: BuildConfig, tokenizer) -> LLMInfo:
    from ingot.builder.paged import llm_info

    return llm_info(hf_model, llm_limits(cfg, hf_model), tokenizer)


def lower(model: onnx.ModelProto) -> onnx.ModelProto:
    from ingot.builder.lower_cpu import lower_paged_attention

    return lower_paged_attention(model)

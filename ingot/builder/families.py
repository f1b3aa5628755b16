"""The causal-LM families paged plans cover, as a table of how each differs from Llama.

Everything else is the Hugging Face modules themselves, run as they are by the paged wrapper
(ingot.builder.paged.PagedCausalLM): Gemma's scaled embeddings are its embedding module, GeGLU is
its MLP module, its (1 + weight) RMSNorm is its norm module, Qwen2's q/k/v biases are in its
projections, and static rope scaling is in the rotary module. What the table names changes the
wrapper's data flow; the attention of each layer (scale, sliding window, soft-capping) is read
from the layer itself (`layer_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    fused_qkv: bool = False  # Phi-3: one qkv_proj, split into q, k, v
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over each head's q and k, before rotary
    sandwich_norms: bool = False  # Gemma 2/3: attention and MLP outputs are normed too before the residual add
    rope_per_layer_type: bool = False  # Gemma 3: sliding and full layers rotate with their own bases
    attn_softcap: bool = False  # Gemma 2: tanh soft-capping of the attention logits (attn_logit_softcapping)
    final_softcap: bool = False  # Gemma 2: tanh soft-capping of the output logits (final_logit_softcapping)


FAMILIES: dict[str, Family] = {
    "LlamaForCausalLM": Family(),
    "MistralForCausalLM": Family(),
    "Qwen2ForCausalLM": Family(),
    "Qwen3ForCausalLM": Family(qk_norm=True),
    "Phi3ForCausalLM": Family(fused_qkv=True),
    "GemmaForCausalLM": Family(),
    "Gemma2ForCausalLM": Family(sandwich_norms=True, attn_softcap=True, final_softcap=True),
    "Gemma3ForCausalLM": Family(qk_norm=True, sandwich_norms=True, rope_per_layer_type=True),
}

# What other families need that paged plans do not have yet
MISSING = {
    "Qwen3MoeForCausalLM": "mixture-of-experts layers",
    "MixtralForCausalLM": "mixture-of-experts layers",
    "Gemma3ForConditionalGeneration": "the vision tower and image tokens of the multimodal Gemma 3",
    "GPT2LMHeadModel": "learned absolute positions and a fused c_attn projection (the GPT-2 layout)",
}


@dataclass(frozen=True)
class LayerAttention:
    """One layer's attention, as the PagedAttention node's attributes take it."""

    scale: float  # softmax scale
    sliding_window: int  # tokens a query attends, itself included (kv > q - window); 0: the whole context
    softcap: float  # logits -> tanh(logits / softcap) * softcap before the softmax; 0: none


def architecture(hf_model) -> str:
    """The loaded model's class (what the wrapper drives), e.g. Gemma3ForCausalLM."""
    return type(hf_model).__name__


def family(hf_model) -> Family:
    return FAMILIES[architecture(hf_model)]


def layer_attention(hf_model, layer: int) -> LayerAttention:
    """Layer `layer`'s attention: Qwen2/3 and Gemma keep a per-layer `sliding_window` (None on full
    layers); Mistral and Phi-3 apply the config's to every layer."""
    config, attn = hf_model.config, hf_model.model.layers[layer].self_attn
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(config, "sliding_window", None)
    softcap = getattr(config, "attn_logit_softcapping", None) if family(hf_model).attn_softcap else None
    return LayerAttention(scale=float(getattr(attn, "scaling", head_dim**-0.5)), sliding_window=int(window or 0),
                          softcap=float(softcap or 0.0))


def final_softcap(hf_model) -> float | None:
    return getattr(hf_model.config, "final_logit_softcapping", None) if family(hf_model).final_softcap else None

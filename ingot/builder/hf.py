"""Hugging Face sources: a local model folder (config.json + safetensors) or a GGUF file.

The model is wrapped in a small module with explicit tensor inputs and named outputs:
encoders give `last_hidden_state` (and `sentence_embedding` when the folder carries a
sentence-transformers pooling config), classifiers and causal LMs give `logits`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ingot.builder.errors import SourceError, first_line
from ingot.builder.loaded import LoadedModel
from ingot.builder.quiet import quiet_transformers
from ingot.builder.spec import DimSpec
from ingot.plans import SourceInfo
from ingot.plans.files import sha256_file

EXAMPLE_TEXTS = [
    "Ingot compiles a model once and runs it anywhere it was built for.",
    "The quick brown fox jumps over the lazy dog.",
]
DEFAULT_MAX_BATCH = 64
_GENERIC_FOLDER_NAMES = {"model", "models", "weights", "checkpoint", "snapshot"}
# tokenizer output key -> tokenizers.Encoding field
_TEXT_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def load_hf_folder(folder: Path) -> LoadedModel:
    if not (folder / "config.json").is_file():
        raise SourceError(f"{folder} is not a Hugging Face model folder (no config.json)")
    if not list(folder.glob("*.safetensors")):
        raise SourceError(
            f"{folder} has no *.safetensors weights (pickled .bin checkpoints are not loaded; convert them to safetensors)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = quiet_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
        kind = _kind(config)
        model = _auto_class(kind).from_pretrained(folder, dtype="float32").eval()
    except Exception as e:
        raise SourceError(f"cannot load the model in {folder}: {type(e).__name__}: {first_line(e)}") from e
    tokenizer = _load_tokenizer(folder) if _has_tokenizer(folder) else None
    model_id = folder.parent.name if folder.name.lower() in _GENERIC_FOLDER_NAMES else folder.name
    source = SourceInfo(type="hf-folder", name=folder.name, sha256=_folder_hash(folder))
    return _wrap(model, kind, tokenizer, source, model_id, pooling=_pooling(folder))


@contextlib.contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within this block, one parse of each GGUF file serves every reader of it.

    transformers reads a GGUF's metadata three times, for the config, the tokenizer and the
    weights (`load_gguf_checkpoint` makes a `gguf.GGUFReader` each time), and a parse walks every
    field part in Python: Gemma 3's 262,144-token vocabulary takes ~25 s a parse, three times the
    dequantization of its weights. The reader memory-maps the file read-only, so sharing it is
    safe; transformers imports the name inside the function, so replacing it here takes effect."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def load_gguf(path: Path) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = quiet_transformers()
    try:
        with gguf_read_once():
            tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype="float32"
            ).eval()
    except Exception as e:
        raise SourceError(f"cannot read GGUF file {path}: {type(e).__name__}: {first_line(e)}") from e
    source = SourceInfo(type="gguf", name=path.name, sha256=sha256_file(path))
    return _wrap(model, "causal-lm", tokenizer, source, path.stem, pooling=None)


def _kind(config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = (config.architectures or [""])[0]
    if arch.endswith("ForCausalLM") or arch in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):  # GPT2LMHeadModel
        return "causal-lm"
    if arch.endswith(("ForSequenceClassification", "ForImageClassification")):
        return "classifier"
    return "encoder"


def _auto_class(kind: str):
    import transformers

    return {
        "causal-lm": transformers.AutoModelForCausalLM,
        "classifier": transformers.AutoModelForSequenceClassification,
        "encoder": transformers.AutoModel,
    }[kind]


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def _load_tokenizer(folder: Path):
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise SourceError(f"cannot load the tokenizer in {folder}: {type(e).__name__}: {first_line(e)}") from e


def _pooling(folder: Path) -> tuple[str, bool] | None:
    """(mode, normalize) from a sentence-transformers folder (modules.json), else None."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    types = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    if "Pooling" not in types:
        return None
    cfg = json.loads((folder / types["Pooling"].get("path", "") / "config.json").read_text())
    mode = "mean" if cfg.get("pooling_mode_mean_tokens") else "cls" if cfg.get("pooling_mode_cls_token") else None
    return (mode, "Normalize" in types) if mode else None


def _folder_hash(folder: Path) -> str:
    """Identity of a model folder: every file's relative path and content."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def _wrap(model, kind: str, tokenizer, source: SourceInfo, model_id: str, pooling) -> LoadedModel:
    import inspect

    params = inspect.signature(model.forward).parameters
    if tokenizer is not None:
        example, text_inputs = text_example(tokenizer, params)
    else:
        ids = torch.randint(0, model.config.vocab_size, (2, 8))
        example, text_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, {}
    max_len = _max_len(model.config, tokenizer)
    dims = {
        name: {0: DimSpec("batch", 1, DEFAULT_MAX_BATCH), 1: DimSpec("sequence", 1, max_len)} for name in example
    }
    outputs = {"encoder": ["last_hidden_state"], "classifier": ["logits"], "causal-lm": ["logits"]}[kind]
    if kind == "encoder" and pooling:
        outputs = [*outputs, "sentence_embedding"]
    return LoadedModel(
        model_id=model_id,
        kind=kind,
        source=source,
        example=example,
        dims=dims,
        output_names=outputs,
        module=_TextModel(model, kind, list(example), pooling),
        architecture=(model.config.architectures or [type(model).__name__])[0],
        tokenizer=tokenizer,
        text_inputs=text_inputs,
        scope_prefix="model.",  # _TextModel.model
    )


def text_example(tokenizer, params) -> tuple[dict, dict[str, str]]:
    """Example feeds from EXAMPLE_TEXTS for the inputs in `params` (right-padded), and the
    input name -> Encoding field map. Sets a pad token (eos) when the tokenizer has none."""
    tokenizer.padding_side = "right"  # left padding leaves fully masked query rows
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    enc = tokenizer(EXAMPLE_TEXTS, padding=True, return_tensors="pt")
    example = {k: v for k, v in enc.items() if k in _TEXT_FIELDS and k in params}
    return example, {k: _TEXT_FIELDS[k] for k in example}


def _max_len(config, tokenizer) -> int:
    limits = [getattr(config, "max_position_embeddings", None) or 4096]
    if tokenizer is not None and 0 < (tokenizer.model_max_length or 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return int(min(limits))


class _TextModel(torch.nn.Module):
    """Explicit tensor inputs in, named tensors out; what the exporter traces."""

    def __init__(self, model, kind: str, input_names: list[str], pooling):
        super().__init__()
        self.model, self.kind, self.input_names, self.pooling = model, kind, input_names, pooling

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        kwargs = {k: v for k, v in kwargs.items() if k in self.input_names}
        if self.kind == "causal-lm":
            kwargs["use_cache"] = False
        out = self.model(**kwargs)
        if self.kind != "encoder":
            return out.logits
        hidden = out.last_hidden_state  # (batch, sequence, hidden)
        if not self.pooling:
            return hidden
        mode, normalize = self.pooling
        if mode == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        else:
            pooled = hidden[:, 0]
        return hidden, F.normalize(pooled, p=2, dim=-1) if normalize else pooled

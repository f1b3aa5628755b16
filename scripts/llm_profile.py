"""Quality and cost of each LLM in the benchmark, measured the same way for Ingot plans and peers:
perplexity on given texts (the windows and token ids of `ingot eval`) and weight bytes per decode
token (scripts/decode_cost.py).

- An Ingot plan: `ingot eval --window W` on each text; bytes from its CPU target's ONNX
  (scripts/plan_bytes.py, as for the onnxruntime-genai model).
- onnxruntime-genai INT4: its model.onnx run directly with onnxruntime, each window a prompt with
  an empty past KV, logits at every position, scored by ingot.runtime.evaluate.perplexity.
- transformers fp32: the same windows through the torch model.

The peers tokenize with the given tokenizer.json (an Ingot plan's, when there is one), reading
each text as `ingot eval` does, so all rows score the same tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from decode_cost import torch_weight_bytes


@dataclass(frozen=True)
class Profile:
    bytes_per_token: int  # weight bytes a decode token reads
    perplexity: dict[str, float]  # text label -> perplexity
    tokens: int  # tokens scored in the first text


def plan_profile(bundle: Path, texts: dict[str, Path], window: int) -> Profile:
    from bench_families import perplexity  # `ingot eval --json` in a subprocess
    from plan_bytes import decode_bytes

    scores = {label: perplexity(bundle, path, window) for label, path in texts.items()}
    return _profile(decode_bytes(bundle).total, scores)


def eval_ids(tokenizer_json: Path, text: Path) -> np.ndarray:
    """Token ids of `text` as `ingot eval` makes them: read as UTF-8 (errors replaced), no special tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = tok.encode(text.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False).ids
    return np.array(ids, dtype=np.int64)


def ortgenai_profile(folder: Path, texts: dict[str, Path], window: int, tokenizer_json: Path, threads: int) -> Profile:
    import onnxruntime as ort
    from plan_bytes import decode_bytes

    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / decoder["filename"]), options, providers=["CPUExecutionProvider"])
    past = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    kv_heads, head_size = decoder["num_key_value_heads"], decoder["head_size"]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = feeds["input_ids"]  # (batch, window): each row a fresh prompt
        empty = np.zeros((ids.shape[0], kv_heads, 0, head_size), dtype=np.float32)
        full = {"input_ids": ids, "attention_mask": np.ones_like(ids)} | {name: empty for name in past}
        return {"logits": session.run(["logits"], full)[0]}  # (batch, window, vocab)

    scores = _scores(run, texts, window, tokenizer_json)
    return _profile(decode_bytes(folder / decoder["filename"]).total, scores)


def transformers_profile(texts: dict[str, Path], window: int, tokenizer_json: Path, threads: int) -> Profile:
    import torch
    from peers import TransformersPeer

    model = TransformersPeer(threads=threads).model

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"logits": model(input_ids=torch.from_numpy(feeds["input_ids"])).logits.float().numpy()}

    return _profile(torch_weight_bytes(model), _scores(run, texts, window, tokenizer_json))


def _scores(run, texts: dict[str, Path], window: int, tokenizer_json: Path) -> dict[str, dict]:
    from ingot.runtime.evaluate import perplexity

    return {label: perplexity(run, ["input_ids"], eval_ids(tokenizer_json, path), window).model_dump()
            for label, path in texts.items()}


def _profile(bytes_per_token: int, scores: dict[str, dict]) -> Profile:
    first = next(iter(scores.values()), {"tokens": 0})
    return Profile(bytes_per_token, {label: s["perplexity"] for label, s in scores.items()}, first["tokens"])

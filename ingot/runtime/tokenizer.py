"""Text → model inputs with the `tokenizers` library and the bundle's tokenizer.json.

Light on purpose: the runtime does not import transformers. Tests check that the ids
equal transformers' tokenizer on real text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ingot.plans import TokenizerInfo


class TextTokenizer:
    def __init__(self, root: Path, info: TokenizerInfo):
        from tokenizers import Tokenizer

        self.info = info
        self.tok = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
        self.tok.no_truncation()  # an over-long text is refused by the input check, not silently cut
        self.tok.no_padding()
        if info.pad_token_id is not None:
            self.tok.enable_padding(pad_id=info.pad_token_id, pad_token=self.tok.id_to_token(info.pad_token_id) or "")
        self.chat_template = _chat_template(root / "tokenizer")

    def ids(self, text: str) -> np.ndarray:
        """Token ids of one long text, without special tokens (for perplexity and calibration)."""
        return np.array(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{input name: int64 (batch, sequence)}, padded on the right."""
        encodings = self.tok.encode_batch(texts)
        return {
            name: np.array([getattr(e, field) for e in encodings], dtype=np.int64)
            for name, field in self.info.input_map.items()
        }


def _chat_template(folder: Path) -> str | None:
    """The Jinja chat template saved with the tokenizer (chat_template.jinja, or tokenizer_config.json's)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None

"""`TokenTexts`: each token's text decoded alone and its bytes, for logprobs (cached by id).

A token decoded alone reads as vLLM's logprobs do: a piece of a multi-byte UTF-8 character
reads U+FFFD, so those texts need not join to the output text. The bytes are the token's own:
from the vocab string for byte-level BPE (GPT-2's byte alphabet) and for SentencePiece byte
fallback tokens (`<0xE6>`), so the bytes of an output's tokens join to its UTF-8 (OpenAI's
`bytes`). Other tokens get the UTF-8 of their text.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine hands its loaded tokenizers.Tokenizer in
    from tokenizers import Tokenizer

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_level_alphabet() -> dict[str, int]:
    """The character byte-level BPE writes for each byte → that byte (GPT-2's `bytes_to_unicode`,
    reversed): printable Latin-1 bytes stand for themselves, the others for chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


class TokenTexts:
    def __init__(self, tokenizer: Tokenizer):
        from tokenizers import decoders

        self.tokenizer = tokenizer
        self._alphabet = byte_level_alphabet() if isinstance(tokenizer.decoder, decoders.ByteLevel) else None
        self._added = set(tokenizer.get_added_tokens_decoder())  # written as themselves, not in the byte alphabet
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        """(the token decoded alone, special tokens included; its bytes)."""
        found = self._cache.get(token_id)
        if found is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            found = self._cache[token_id] = (text, self._bytes(token_id, text))
        return found

    def _bytes(self, token_id: int, text: str) -> bytes:
        piece = self.tokenizer.id_to_token(token_id) or ""
        if token_id in self._added:
            return text.encode()
        if self._alphabet is not None and piece and all(c in self._alphabet for c in piece):
            return bytes(self._alphabet[c] for c in piece)
        if match := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return text.encode()

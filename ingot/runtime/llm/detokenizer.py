"""`IncrementalDetokenizer`: a request's output text, decoded as tokens arrive, with stop strings.

Byte-level BPE splits a multi-byte UTF-8 character (é, 日, an emoji) across tokens, and
SentencePiece-style decoders drop a leading space at the start of a decode. So each step
decodes a short window: the tokens from `prefix_offset` to the end, minus the text of the
tokens from `prefix_offset` to `read_offset` (already emitted). While the window ends in
an incomplete character (U+FFFD) nothing is emitted and the offsets stay, so the bytes of
the character are decoded together once complete (vLLM's `detokenize_incrementally`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the caller hands a loaded tokenizers.Tokenizer in; nothing is imported here
    from tokenizers import Tokenizer

# Prompt tokens decoded as context before the first output token.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Iterable[int],
        stop: Iterable[str] = (),
        skip_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = tuple(stop)
        self.token_ids = list(prompt_token_ids)
        self.read_offset = len(self.token_ids)  # tokens up to here are emitted as text
        self.prefix_offset = max(self.read_offset - PROMPT_CONTEXT_TOKENS, 0)  # decode context starts here
        self.output_text = ""
        self.stop_string: str | None = None  # the stop string that finished the output
        self._taken = 0  # characters of output_text handed out by take_new_text

    @property
    def finished(self) -> bool:
        return self.stop_string is not None

    def update(self, new_token_ids: Iterable[int]) -> str | None:
        """Append tokens; returns the stop string if one now ends the output (which is cut before it)."""
        assert not self.finished, "the output already ended at a stop string"
        checked = len(self.output_text)
        for token_id in new_token_ids:
            self.token_ids.append(token_id)
            self.output_text += self._decode_next()
        if self.stop:
            self._check_stop(checked)
        return self.stop_string

    def take_new_text(self, finished: bool = False) -> str:
        """Text not handed out yet, for streaming. Until the request finishes, the last
        (longest stop string - 1) characters are held back: they may start a stop string."""
        end = len(self.output_text)
        if not finished and not self.finished and self.stop:
            end -= max(map(len, self.stop)) - 1
        if end <= self._taken:
            return ""
        text, self._taken = self.output_text[self._taken:end], end
        return text

    def _decode_next(self) -> str:
        """Text added by the newest token, or "" while it ends in an incomplete character."""
        decode = self.tokenizer.decode
        ids, skip = self.token_ids, self.skip_special_tokens
        prefix_text = decode(ids[self.prefix_offset:self.read_offset], skip_special_tokens=skip)
        new_text = decode(ids[self.prefix_offset:], skip_special_tokens=skip)
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        return new_text[len(prefix_text):]

    def _check_stop(self, checked: int) -> None:
        """Find the earliest stop string that ends in text after `checked`; cut the output there."""
        found = []
        for stop in self.stop:
            index = self.output_text.find(stop, max(checked - len(stop) + 1, 0))
            if index != -1:
                found.append((index, stop))
        if found:
            index, self.stop_string = min(found)
            self.output_text = self.output_text[:index]

"""IncrementalDetokenizer: text decoded token by token equals the full decode, stop strings cut it."""

import pytest

from ingot.runtime.llm import IncrementalDetokenizer
from tests.models import TEXT

UNICODE = "Café au lait, naïve résumé. 日本語のテキスト。 Emoji: 🦊🚀 and ✓ done. "


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained here, as tests.models.make_tiny_llama does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT, UNICODE], trainer)
    return tok


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def stream(tokenizer, prompt: str, output: str, chunk: int = 1, stop=()) -> IncrementalDetokenizer:
    detok = IncrementalDetokenizer(tokenizer, ids(tokenizer, prompt), stop=stop)
    out = ids(tokenizer, output)
    for i in range(0, len(out), chunk):
        if detok.update(out[i:i + chunk]):
            break
    return detok


def test_multibyte_characters_are_split_across_tokens(tokenizer):
    """The case the prefix/read offsets exist for: a decode of a token prefix ends mid-character."""
    out = ids(tokenizer, "日本 🦊")
    partial = [tokenizer.decode(out[:i]) for i in range(1, len(out))]
    assert any(text.endswith("\ufffd") for text in partial)


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("output", [UNICODE, "Plans are bundles: é, 日本, 🦊🚀!", TEXT[:200]])
def test_incremental_decode_equals_full_decode(tokenizer, output, chunk):
    detok = stream(tokenizer, "The quick brown fox", output, chunk)
    assert detok.output_text == tokenizer.decode(ids(tokenizer, output)) == output
    assert "\ufffd" not in detok.output_text and detok.stop_string is None


def test_each_step_emits_only_new_text(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ids(tokenizer, "Say: "))
    pieces = []
    for token in ids(tokenizer, "日本🦊"):
        before = detok.output_text
        detok.update([token])
        pieces.append(detok.output_text[len(before):])
    assert "".join(pieces) == "日本🦊" and "" in pieces  # some tokens wait for the rest of a character


def test_stop_string_truncates_and_reports(tokenizer):
    detok = stream(tokenizer, "Ingot", " compiles models ahead of time. The quick", stop=["ahead", "time"])
    assert detok.stop_string == "ahead" and detok.finished
    assert detok.output_text == " compiles models "


def test_earliest_stop_string_wins_within_one_update(tokenizer):
    detok = stream(tokenizer, "Ingot", " compiles models ahead of time.", chunk=100, stop=["time", "models"])
    assert (detok.stop_string, detok.output_text) == ("models", " compiles ")


def test_multibyte_stop_string(tokenizer):
    detok = stream(tokenizer, "x", "Café au lait, 日本語のテキスト", stop=["日本"])
    assert (detok.stop_string, detok.output_text) == ("日本", "Café au lait, ")


def test_streamed_text_never_shows_a_stop_string(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ids(tokenizer, "Ingot"), stop=["lazy dog"])
    streamed = ""
    for token in ids(tokenizer, " The quick brown fox jumps over the lazy dog. A man"):
        stop = detok.update([token])
        streamed += detok.take_new_text(finished=stop is not None)
        if stop:
            break
    assert streamed == detok.output_text == " The quick brown fox jumps over the "

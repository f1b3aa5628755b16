"""What a new user hits (issue 22): cheap mistakes refused at once, every option honoured or
refused, messages that say what to type. Each test runs the CLI as a user types it."""

from __future__ import annotations

import time

import pytest

from tests.conftest import assert_user_error, ingot, tree_digest

FAST_S = 15  # a refusal before any model load/export takes an interpreter start, not a build


def timed(*args: str):
    start = time.monotonic()
    proc = ingot(*args)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("scheme", ["fp8", "int4-awq"])
def test_quant_without_calib_is_refused_before_loading(scheme, tiny_llama_dir, tmp_path):
    proc, took = timed("build", tiny_llama_dir, "-o", tmp_path / "q", "--quant", scheme)
    assert_user_error(proc, f"--quant {scheme} needs calibration data: pass --calib FILE")
    assert took < FAST_S, took
    assert not (tmp_path / "q").exists()


def test_other_models_bundle_at_output_is_refused_before_export(cnn_bundle, tiny_llama_dir, tmp_path):
    out = tmp_path / "cnn"
    assert ingot("build", cnn_bundle / "targets/cpu-x86_64/model.onnx", "-o", out).returncode == 0
    before = tree_digest(out)
    proc, took = timed("build", tiny_llama_dir, "-o", out, "--quant", "int4")
    assert_user_error(proc, "holds a bundle of a different model", "--overwrite")
    assert "export to ONNX" not in proc.stderr, proc.stderr
    assert took < FAST_S, took
    assert tree_digest(out) == before


def test_bench_prefix_longer_than_prompt_is_refused_before_loading(llama_bundle):
    proc, took = timed("bench", llama_bundle, "--prompt-len", "8", "--prefix-len", "16")
    assert_user_error(proc, "--prefix-len 16 is longer than --prompt-len 8")
    assert took < FAST_S, took


def test_run_prompt_longer_than_max_model_len_is_refused_before_the_kv_cache(llama_bundle):
    proc, took = timed("run", llama_bundle, "--prompt", "hello world " * 2000)
    assert_user_error(proc, "tokens, more than max_model_len")
    assert "KV cache" not in proc.stderr, proc.stderr
    assert took < FAST_S, took


def test_run_prompt_with_output_is_refused(llama_bundle, tmp_path):
    proc = ingot("run", llama_bundle, "--prompt", "Hello", "--output", tmp_path / "gen.npz")
    assert_user_error(proc, "--output saves tensor outputs", "stdout")
    assert not (tmp_path / "gen.npz").exists()


@pytest.mark.parametrize("options", [("--max-tokens", "5"), ("--chat",), ("--stream", "--temperature", "0.5")])
def test_generation_options_without_prompt_are_refused_by_name(options, bert_bundle):
    proc = ingot("run", bert_bundle, "--text", "hello", *options)
    line = assert_user_error(proc, "only with --prompt")
    assert all(o in line for o in options if o.startswith("--")), line


def test_text_run_at_the_defaults_still_works(bert_bundle):
    assert ingot("run", bert_bundle, "--text", "hello").returncode == 0


def test_bench_says_where_options_pass_the_plan_limits(llama_bundle):
    proc = ingot("bench", llama_bundle, "--num-requests", "2", "--prompt-len", "8", "--output-len", "2",
                 "--max-num-tokens", "4096", "--concurrency", "64")
    assert proc.returncode == 0, proc.stderr
    assert "--max-num-tokens 4096 clamped to the plan's limit 2048" in proc.stderr, proc.stderr
    assert "--concurrency 64: at most 32 requests (the plan's max_num_seqs) run at once" in proc.stderr, proc.stderr


def test_prompt_on_an_encoder_bundle_says_an_encoder(bert_bundle):
    assert_user_error(ingot("run", bert_bundle, "--prompt", "hi"), "is an encoder bundle")


def test_run_without_input_names_the_right_options(llama_bundle, bert_bundle):
    assert_user_error(ingot("run", llama_bundle), "--prompt")
    assert_user_error(ingot("run", bert_bundle), "--text", "--input")


def test_run_on_a_model_file_says_how_to_build_it(tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert_user_error(ingot("run", gguf), f"ingot build {gguf} -o DIR")


@pytest.mark.parametrize(("args", "option"), [
    (("bench", "--concurrency", "0"), "--concurrency"),
    (("bench", "--max-num-tokens", "0"), "--max-num-tokens"),
    (("run", "--prompt", "Hi", "--temperature", "-1"), "--temperature"),
    (("run", "--prompt", ""), "--prompt: empty prompt"),
])
def test_bad_option_values_are_usage_errors_exit_2(args, option, llama_bundle):
    proc, took = timed(args[0], llama_bundle, *args[1:])
    assert_user_error(proc, option, code=2)
    assert took < FAST_S, took

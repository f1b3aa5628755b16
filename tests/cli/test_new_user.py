"""What a new user hits (issue 22): cheap mistakes refused at once, every option honoured or
refused, messages that say what to type. Each test runs the CLI as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, assert_user_error, ingot, tree_digest

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


def test_merge_of_two_models_says_so(llama_bundle, bert_bundle, tmp_path):
    proc, took = timed("merge", llama_bundle, bert_bundle, "-o", tmp_path / "both")
    line = assert_user_error(proc, "are different models", "merge takes builds of one model")
    assert "--overwrite" not in line, line
    assert took < FAST_S, took
    assert not (tmp_path / "both").exists()


def test_eval_reads_a_text_file_and_text_is_run_s_option(llama_bundle, tmp_path):
    (tmp_path / "t.txt").write_text("Ingot compiles models ahead of time. " * 20)
    proc = ingot("eval", llama_bundle, "-f", tmp_path / "t.txt", "--window", "32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("perplexity "), proc.stdout
    assert ingot("eval", llama_bundle, "--text", tmp_path / "t.txt").returncode == 2


def test_text_file_given_as_npy_is_one_line_without_pickle(cnn_bundle, tmp_path):
    (tmp_path / "notes.npy").write_text("my notes\n")
    proc, took = timed("run", cnn_bundle, "--input", f"image={tmp_path / 'notes.npy'}")
    assert_user_error(proc, "notes.npy is not a .npy array")
    assert "pickle" not in proc.stderr, proc.stderr
    assert took < FAST_S, took


def interrupted(args: tuple, ready: str) -> subprocess.CompletedProcess:
    """`ingot ARGS`, sent SIGINT (Ctrl-C) once a line holding `ready` is on its stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    # SIGINT as a terminal gives it: a shell ignores it in the jobs it starts with `&`, and a
    # child inherits that, so the suite run in the background would never see Ctrl-C's effect
    proc = subprocess.Popen([sys.executable, "-m", "ingot", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if ready in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(seen) + err)


def test_ctrl_c_during_a_build_is_one_line_exit_130(tiny_llama_dir, tmp_path):
    proc = interrupted(("build", tiny_llama_dir, "-o", tmp_path / "llama"), "load source")  # then: the export
    assert_user_error(proc, "interrupted", code=130)
    assert proc.stderr.splitlines()[-1] == "error: interrupted", proc.stderr
    assert "export to ONNX" not in proc.stderr, "the build ended before Ctrl-C"
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging folder


def test_ctrl_c_during_generation_is_one_line_exit_130(llama_bundle, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"hello world {i}\n" for i in range(3000)))
    proc = interrupted(("run", llama_bundle, "--prompts-file", prompts, "--max-tokens", "200", "--ignore-eos"),
                       "kv cache:")
    assert_user_error(proc, "interrupted", code=130)
    assert proc.stderr.splitlines()[-1] == "error: interrupted", proc.stderr
    assert proc.stdout == ""


def test_a_verify_that_did_not_run_says_skipped(cnn_bundle, tmp_path):
    onnx = next(cnn_bundle.glob("targets/cpu-*/model.onnx"))
    proc = ingot("build", onnx, "-o", tmp_path / "onnx")
    assert proc.returncode == 0, proc.stderr
    assert "verify cpu-x86_64 skipped: an .onnx source has no torch model to compare with" in proc.stderr, proc.stderr
    assert "✓ verify" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("options", "which"), [
    ((), "(the default gates): passed (--max-ppl-increase 50, --min-top1 0.5): perplexity"),
    (("--max-ppl-increase", "80"), "(--max-ppl-increase given, the default gates off): passed (--max-ppl-increase 80): "),
])
def test_a_quantized_build_says_which_gates_ran(options, which, llama_bundle, tmp_path):
    proc = ingot("build", llama_bundle, "-o", tmp_path / "q", "--quant", "int4", *options, "--json")
    assert proc.returncode == 0, proc.stderr
    gates = [line for line in proc.stderr.splitlines() if line.startswith("accuracy gate on cpu-x86_64 ")]
    assert len(gates) == 1 and which in gates[0], proc.stderr
    assert json.loads(proc.stdout)["manifest"]["precision"] == "int4"  # stdout: the JSON alone


def test_run_json_is_one_compact_line_of_exact_float32(bert_bundle, tmp_path):
    texts = ("--text", "A man is eating food.", "--text", "The quick brown fox jumps over the lazy dog.")
    proc = ingot("run", bert_bundle, *texts, "--json", "--output", tmp_path / "out.npz")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("}\n") and proc.stdout.count("\n") == 1, proc.stdout[:200]
    data = json.loads(proc.stdout)
    saved = np.load(tmp_path / "out.npz")
    for name, out in data["outputs"].items():
        assert np.array_equal(np.array(out["data"], out["dtype"]), saved[name]), name
    assert len(proc.stdout) < 12_000, len(proc.stdout)  # was 28 KB: indent=2 and float64 reprs of float32


@pytest.mark.parametrize("stream", [(), ("--stream",)])
def test_output_cut_by_max_model_len_says_so(stream, llama_bundle):
    """A prompt near max_model_len (256 on the tiny plan) with --max-tokens past it: the output
    stops at the limit, with one line saying so."""
    prompt = " ".join(["fox"] * 120)
    proc = ingot("run", llama_bundle, "--prompt", prompt, "--max-tokens", "200", "--ignore-eos", *stream)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: request stopped at")]
    assert len(notes) == 1 and "of --max-tokens 200" in notes[0] and "max_model_len 256" in notes[0], proc.stderr
    short = ingot("run", llama_bundle, "--prompt", "fox", "--max-tokens", "5", "--ignore-eos", *stream)
    assert "note:" not in short.stderr

"""`ingot run DIR --prompt ...` and `ingot bench DIR` on the tiny random Llama plan, as users run them."""

import json

import pytest

from ingot.plans import open_bundle
from tests.conftest import assert_user_error, ingot



def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def newlines(text: str) -> str:
    """As a text-mode pipe reads it (the random model writes any byte, \r included)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def test_prompt_prints_the_text_and_the_kv_report(llama_bundle):
    proc = ingot("run", llama_bundle, "--prompt", "The quick brown fox", "--max-tokens", "8", "--ignore-eos")
    assert proc.returncode == 0, proc.stderr
    assert "kv cache:" in proc.stderr and "blocks" in proc.stderr and "tokens" in proc.stderr
    info = open_bundle(llama_bundle).manifest.llm  # the cpu plan's windows, beside the pool, at most
    windows = info.max_num_seqs * info.max_model_len * info.kv_bytes_per_token
    assert f"attention windows up to {windows / 2**20:.1f} MiB more" in proc.stderr
    (data,) = lines(ingot("run", llama_bundle, "--prompt", "The quick brown fox", "--max-tokens", "8",
                          "--ignore-eos", "--json").stdout)
    assert proc.stdout == newlines(data["text"]) + "\n"
    assert data["prompt"] == "The quick brown fox" and data["finish_reason"] == "length"
    assert len(data["token_ids"]) == data["num_output_tokens"] == 8 and data["num_prompt_tokens"] > 1
    assert data["ttft_s"] > 0 and data["e2e_s"] >= data["ttft_s"]


def test_stream_prints_the_same_text_as_it_comes(llama_bundle):
    args = ("run", llama_bundle, "--prompt", "A man is eating food.", "--max-tokens", "10", "--ignore-eos")
    plain, streamed = ingot(*args), ingot(*args, "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == plain.stdout
    events = lines(ingot(*args, "--stream", "--json").stdout)
    assert len(events) == 10 and events[-1]["finished"] and not any(e["finished"] for e in events[:-1])
    assert "".join(e["delta_text"] for e in events) == events[-1]["text"]
    assert newlines(events[-1]["text"]) == plain.stdout[:-1]
    assert sum((e["delta_token_ids"] for e in events), []) == events[-1]["token_ids"]


def test_prompts_file_runs_all_prompts_in_order(llama_bundle, tmp_path):
    prompts = ["The quick brown fox", "A man is eating food.", "Plans are bundles"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts[:2]) + "\n\n" + prompts[2] + "\n")
    proc = ingot("run", llama_bundle, "--prompts-file", path, "--max-tokens", "4", "--ignore-eos", "--json")
    assert proc.returncode == 0, proc.stderr
    data = lines(proc.stdout)
    assert [d["prompt"] for d in data] == prompts and [d["index"] for d in data] == [0, 1, 2]
    assert all(len(d["token_ids"]) == 4 for d in data)
    streamed = ingot("run", llama_bundle, "--prompts-file", path, "--max-tokens", "4", "--ignore-eos", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert [line for line in streamed.stdout.splitlines() if line.startswith("--- [")] == [
        f"--- [{i}] {p}" for i, p in enumerate(prompts)]


def test_sampling_options_and_stop_strings(llama_bundle):
    base = ("run", llama_bundle, "--prompt", "The quick brown fox", "--max-tokens", "16", "--ignore-eos", "--json")
    sampled = [lines(ingot(*base, "--temperature", "1", "--top-k", "50", "--top-p", "0.9", "--seed", "3").stdout)[0]
               for _ in range(2)]
    assert sampled[0]["token_ids"] == sampled[1]["token_ids"]
    (full,) = lines(ingot(*base).stdout)
    stop = full["text"][5:7]
    (cut,) = lines(ingot(*base, "--stop", stop).stdout)
    assert cut["finish_reason"] == "stop" and cut["text"] == full["text"][:full["text"].find(stop)]


def test_chat_applies_the_tokenizers_template(chat_llama_bundle):
    bundle = chat_llama_bundle
    plain, chat = (lines(ingot("run", bundle, "--prompt", "Hi", "--max-tokens", "2", "--json", *extra).stdout)[0]
                   for extra in ((), ("--chat",)))
    # "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" is many more tokens than "Hi".
    assert chat["num_prompt_tokens"] > plain["num_prompt_tokens"] + 10
    assert chat["prompt"] == "Hi"


def test_chat_without_a_template_is_an_error(llama_bundle):
    assert_user_error(ingot("run", llama_bundle, "--prompt", "Hi", "--chat"), "no chat template")


def test_bad_generation_options_are_refused(tmp_path):
    from ingot.cli.generate import parse_memory, read_prompts, sampling_params
    from ingot.runtime import InputError

    with pytest.raises(InputError, match="--prompts-file: file not found"):
        read_prompts([], tmp_path / "missing.txt")
    with pytest.raises(InputError, match="--prompt: empty prompt"):
        read_prompts([""], None)
    with pytest.raises(InputError, match="--max-tokens"):
        sampling_params(max_tokens=0)
    with pytest.raises(InputError, match="--top-p"):
        sampling_params(top_p=0)
    with pytest.raises(InputError, match="--kv-cache-memory 'lots'"):
        parse_memory("lots")
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("0.5") == 0.5


def test_a_kv_cache_under_one_sequence_and_an_over_long_prompt_are_refused(llama_bundle):
    from ingot.runtime import RunError
    from ingot.runtime.llm import LLM, PromptTooLongError, load_runner

    with pytest.raises(RunError, match="KV cache of 0 blocks.*max_model_len"):
        load_runner(llama_bundle, kv_cache_memory=1024)
    with pytest.raises(PromptTooLongError, match="max_model_len"):
        LLM(llama_bundle, kv_cache_memory=1 << 20).generate(["fox " * 300])


def test_generation_and_tensor_inputs_together_are_one_error_line(llama_bundle):
    assert_user_error(ingot("run", llama_bundle, "--prompt", "Hi", "--text", "Hi"), "--text")


def test_prompt_on_a_bundle_without_an_llm_plan_is_refused(cnn_bundle):
    assert_user_error(ingot("run", cnn_bundle, "--prompt", "Hi"), "LLM plan", "--text")


def test_text_runs_still_work_next_to_generation(cnn_bundle, tmp_path):
    import numpy as np

    np.save(tmp_path / "image.npy", np.zeros((1, 3, 16, 16), np.float32))
    proc = ingot("run", cnn_bundle, "--input", f"image={tmp_path / 'image.npy'}", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"]["logits"]["shape"] == [1, 5]


def test_bench_json_reports_positive_figures(llama_bundle):
    proc = ingot("bench", llama_bundle, "--num-requests", "6", "--prompt-len", "40", "--output-len", "5",
                 "--concurrency", "3", "--prefix-len", "32", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["num_requests"], data["prompt_len"], data["output_len"], data["concurrency"]) == (6, 40, 5, 3)
    assert data["prompt_source"] in ("shakespeare", "synthetic")
    for key in ("output_tokens_per_s", "ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "wall_s"):
        assert data[key] > 0, key
    assert data["ttft_p90_s"] >= data["ttft_p50_s"] and data["output_tokens"] == 30
    assert data["preemptions"] >= 0
    assert 0 < data["prefix_cache_hit_rate"] < 1  # the first 3 requests compute the prefix, the last 3 reuse it
    rated = json.loads(ingot("bench", llama_bundle, "--num-requests", "4", "--prompt-len", "16", "--output-len", "3",
                             "--concurrency", "2", "--request-rate", "50", "--json").stdout)
    assert rated["request_rate"] == 50 and rated["output_tokens"] == 12 and rated["prefix_cache_hit_rate"] == 0


def test_bench_refuses_a_workload_longer_than_the_plan(llama_bundle):
    assert_user_error(ingot("bench", llama_bundle, "--prompt-len", "250", "--output-len", "10"), "max_model_len")


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_chat_answers_paris_streamed_or_not(smollm2_bundle):
    args = ("run", smollm2_bundle, "--prompt", "What is the capital of France?", "--chat", "--max-tokens", "20")
    plain, streamed = ingot(*args), ingot(*args, "--stream")
    assert plain.returncode == 0, plain.stderr
    assert "Paris" in plain.stdout and streamed.stdout == plain.stdout

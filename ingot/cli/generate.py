"""`ingot run DIR --prompt ...`: text generation from an LLM bundle (LLM, or AsyncLLM for --stream).

Options become a `SamplingParams` and a prompt list here, with one `InputError` line for
anything wrong (a `UsageError`, exit 2, for a bad option value); the runtime does the rest. Output: the text (or one JSON object per
request per line) on stdout; the KV report and a summary on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from ingot.cli.errors import UsageError
from ingot.runtime.errors import InputError
from ingot.runtime.llm.kv_cache import memory_for_requests, parse_memory  # noqa: F401  (parse_memory: the CLI's --kv-cache-memory)

OPTION_NAMES = {"max_tokens": "--max-tokens", "temperature": "--temperature", "top_p": "--top-p",
                "top_k": "--top-k", "seed": "--seed", "stop": "--stop"}


def sampling_params(**options):
    """SamplingParams from CLI options; a bad value is one error line naming the option."""
    from ingot.runtime.llm import SamplingParams

    try:
        return SamplingParams(**options)
    except ValidationError as e:
        err = e.errors()[0]
        name = OPTION_NAMES.get(str(err["loc"][0]), str(err["loc"][0])) if err["loc"] else "options"
        raise UsageError(f"{name}: {err['msg'].lower()} (got {err.get('input')!r})") from None


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """--prompt values, then the non-empty lines of --prompts-file."""
    prompts = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise InputError(f"--prompts-file: file not found: {prompts_file}")
        lines = prompts_file.read_text(encoding="utf-8", errors="replace").splitlines()
        from_file = [line for line in lines if line.strip()]
        if not from_file:
            raise InputError(f"--prompts-file {prompts_file}: no prompts (one per line)")
        prompts += from_file
    if any(not p for p in prompts):
        raise UsageError("--prompt: empty prompt")
    return prompts


def check_llm_bundle(bundle: Path):
    """Refuse a bundle without an LLM plan before loading anything; returns its manifest."""
    from ingot.plans import open_bundle

    manifest = open_bundle(bundle, verify=False).manifest
    if getattr(manifest, "llm", None) is None:
        raise InputError(f"{manifest.model.id} is {_a(manifest.model.kind)} bundle without an LLM plan: "
                         f"--prompt needs a causal-LM bundle (use --text or --input for this one)")
    return manifest


def prompt_lengths(bundle: Path, manifest, prompts: list[str]) -> list[int] | None:
    """Tokens of each prompt as the engine counts them (BOS as recorded at build), with the
    tokenizer alone (before the KV cache is allocated); None for a bundle without a tokenizer."""
    from ingot.runtime.tokenizer import TextTokenizer

    if manifest.tokenizer is None:
        return None
    llm = manifest.llm
    tok = TextTokenizer(Path(bundle), manifest.tokenizer).tok
    bos = 1 if llm.add_bos and llm.bos_token_id is not None else 0
    return [bos + len(tok.encode(prompt, add_special_tokens=False).ids) for prompt in prompts]


def check_prompt_lengths(manifest, lengths: list[int]) -> None:
    """Refuse a prompt longer than the plan's max_model_len."""
    from ingot.runtime.llm.errors import PromptTooLongError

    limit = manifest.llm.max_model_len
    for index, count in enumerate(lengths):
        if count > limit:
            where = "" if len(lengths) == 1 else f" {index}"
            raise PromptTooLongError(f"prompt{where} has {count} tokens, more than max_model_len {limit}")


CHAT_MARGIN = 32  # tokens a chat template adds around a message, for sizing the KV cache only


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def generate(bundle: Path, prompts: list[str], params, *, chat: bool, stream: bool, json_out: bool,
             kv_cache_memory: int | float | None, target: str | None) -> None:
    """Run every prompt concurrently and print the results in input order."""
    manifest = check_llm_bundle(bundle)
    lengths = prompt_lengths(bundle, manifest, prompts)
    if lengths is not None and not chat:  # a chat template adds tokens: the engine checks those prompts
        check_prompt_lengths(manifest, lengths)
    if kv_cache_memory is None and lengths is not None:  # what these requests need
        margin = CHAT_MARGIN if chat else 0
        kv_cache_memory = memory_for_requests(manifest.llm, [n + margin + params.max_tokens for n in lengths])
    if stream:
        import asyncio

        asyncio.run(_stream(bundle, prompts, params, chat=chat, json_out=json_out,
                            kv_cache_memory=kv_cache_memory, target=target))
        return
    from ingot.runtime.llm import LLM

    with LLM(bundle, kv_cache_memory=kv_cache_memory, target=target, max_waiting=max(1024, len(prompts))) as llm:
        _report(llm.startup_report())
        start = time.perf_counter()
        if chat:
            outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
        else:
            outputs = llm.generate(prompts, params)
        for index, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
            if json_out:
                _print_line(request_json(index, prompt, output))
            else:
                _print_text(index, prompt, output.text, len(prompts))
        _summary(outputs, time.perf_counter() - start, params.max_tokens, manifest.llm.max_model_len)


async def _stream(bundle: Path, prompts: list[str], params, *, chat: bool, json_out: bool,
                  kv_cache_memory: int | float | None, target: str | None) -> None:
    """Submit all, then print each request's deltas in input order as they come (later
    requests run meanwhile; their deltas wait in their streams)."""
    from ingot.runtime.llm import AsyncLLM
    from ingot.runtime.llm.llm import chat_template, render_chat, special_tokens

    llm = AsyncLLM.from_bundle(bundle, kv_cache_memory=kv_cache_memory, target=target,
                               max_waiting=max(1024, len(prompts)))
    try:
        _report(llm.startup_report())
        start, finals = time.perf_counter(), []
        runner = llm.engine.runner
        template = chat_template(runner) if chat else None
        request_ids = []
        for p in prompts:
            if template is None:
                request_ids.append(llm.submit(p, params))
            else:
                text = render_chat(template, [{"role": "user", "content": p}], **special_tokens(runner))
                ids = list(llm.engine.tokenize(text, add_special_tokens=False))
                request_ids.append(llm.submit(text, params, prompt_token_ids=ids))
        for index, (prompt, request_id) in enumerate(zip(prompts, request_ids, strict=True)):
            if not json_out and len(prompts) > 1:
                print(_header(index, prompt), flush=True)
            async for output in llm.stream(request_id):
                _emit_delta(index, prompt, output, json_out)
            finals.append(output)
        _summary(finals, time.perf_counter() - start, params.max_tokens, runner.info.max_model_len)
    finally:
        await llm.shutdown()


def request_json(index: int, prompt: str, output) -> dict:
    m = output.metrics
    return {
        "index": index, "request_id": output.request_id, "prompt": prompt, "text": output.text,
        "token_ids": list(output.token_ids), "finish_reason": output.finish_reason and output.finish_reason.value,
        "num_prompt_tokens": output.num_prompt_tokens, "num_output_tokens": output.num_output_tokens,
        "num_cached_tokens": m.num_cached_tokens, "ttft_s": m.ttft_s, "tpot_s": m.tpot_s(output.num_output_tokens),
        "e2e_s": m.e2e_s,
    }


def _emit_delta(index: int, prompt: str, output, json_out: bool) -> None:
    if json_out:
        delta = {"index": index, "delta_text": output.delta_text, "delta_token_ids": list(output.delta_token_ids),
                 "finished": output.finished}
        _print_line({**request_json(index, prompt, output), **delta} if output.finished else delta)
        return
    sys.stdout.write(output.delta_text + ("\n" if output.finished else ""))
    sys.stdout.flush()


def _header(index: int, prompt: str) -> str:
    return f"--- [{index}] {prompt}"


def _print_text(index: int, prompt: str, text: str, count: int) -> None:
    if count > 1:
        print(_header(index, prompt))
    print(text, flush=True)


def _print_line(data: dict) -> None:
    print(json.dumps(data, ensure_ascii=False), flush=True)


def _report(report) -> None:
    print(report, file=sys.stderr, flush=True)


def _summary(outputs: list, wall_s: float, max_tokens: int, max_model_len: int) -> None:
    for index, o in enumerate(outputs):  # cut short by the plan's limit, not by --max-tokens: say so
        if o.num_output_tokens < max_tokens and o.num_prompt_tokens + o.num_output_tokens >= max_model_len:
            where = "" if len(outputs) == 1 else f" {index}"
            print(f"note: request{where} stopped at {o.num_output_tokens} of --max-tokens {max_tokens}: its "
                  f"{o.num_prompt_tokens} prompt tokens and the output reached max_model_len {max_model_len}",
                  file=sys.stderr, flush=True)
    tokens = sum(o.num_output_tokens for o in outputs)
    print(f"{len(outputs)} request(s), {tokens} output tokens in {wall_s:.2f}s "
          f"({tokens / wall_s if wall_s else 0:.1f} tokens/s)", file=sys.stderr, flush=True)

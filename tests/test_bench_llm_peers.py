"""scripts/bench_llm_peers.py's arithmetic, without running a model: medians over rounds, ratios
taken within a round, the bandwidth ceiling, and a transformers model's bytes per token."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from bench_llm_peers import parse_plans, summarize, table  # noqa: E402
from decode_cost import ceiling, ceiling_fraction, read_bandwidth, torch_weight_bytes  # noqa: E402
from llm_profile import Profile  # noqa: E402


def run(name: str, r: int, c: int, tok_s: float, tpot: float = 0.01) -> dict:
    return {"round": r, "name": name, "concurrency": c, "output_tokens_per_s": tok_s, "ttft_p50_s": 0.1 * c,
            "tpot_p50_s": tpot}


def test_summary_takes_each_rounds_ratio_then_the_median():
    # the reference slows down in round 2: the ratio of medians (110/100) is not the median of ratios
    rows = [run("int4", 0, 1, 100), run("ortgenai", 0, 1, 100), run("int4", 1, 1, 110), run("ortgenai", 1, 1, 100),
            run("int4", 2, 1, 120), run("ortgenai", 2, 1, 50)]
    profiles = {"int4": Profile(100_000_000, {"held-out": 50.0}, 9946), "ortgenai": Profile(80_000_000, {}, 0)}
    mine, ref = summarize(rows, profiles, bandwidth=20e9, concurrency=(1,))
    assert mine["output_tokens_per_s_c1"] == 110 and mine["vs_ortgenai_c1"] == pytest.approx(1.1)  # of 1, 1.1, 2.4
    assert "vs_ortgenai_c1" not in ref
    assert mine["ceiling_tok_s"] == pytest.approx(200.0)  # 20 GB/s over 100 MB a token
    assert mine["ceiling_fraction"] == pytest.approx(0.5)  # 100 tok/s decode (10 ms a token) of 200
    assert ref["ceiling_tok_s"] == pytest.approx(250.0) and mine["perplexity"] == {"held-out": 50.0}


def test_table_leaves_what_was_not_measured_empty():
    rows = [run("int4", 0, 1, 100), run("int4", 0, 16, 400)]
    summary = summarize(rows, {"int4": Profile(100_000_000, {"held-out": 50.0}, 9946)}, None, (1, 16))
    lines = table(summary, (1, 16), ["held-out"], {"int4": "q/int4"}).splitlines()
    assert lines[0].startswith("| | perplexity held-out | MB read / token | ceiling tok/s | C=1 tok/s |")
    assert lines[2] == "| Ingot int4 | 50.00 | 100.0 |  | 100.0 | 0.100 s | 10.0 ms |  | 400.0 | 1.600 s |  |  |"
    assert len(lines[2].split("|")) == len(lines[0].split("|"))


def test_ceiling_arithmetic_and_plan_names():
    assert ceiling(20e9, 200_000_000) == pytest.approx(100.0)
    assert ceiling_fraction(0.02, 20e9, 200_000_000) == pytest.approx(0.5)
    assert parse_plans(["int4=q/int4", "out/awq"]) == {"int4": Path("q/int4"), "awq": Path("out/awq")}


def test_read_bandwidth_is_a_plausible_rate():
    assert 1e8 < read_bandwidth(gib=1 / 64, passes=2) < 1e13  # bytes/s


def test_transformers_bytes_count_a_tied_embedding_once_and_whole():
    torch = pytest.importorskip("torch")

    class LM(torch.nn.Module):
        def __init__(self, tied: bool):
            super().__init__()
            self.embed, self.body = torch.nn.Embedding(100, 8), torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, 100, bias=False)
            if tied:
                self.head.weight = self.embed.weight

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.head

    body = (8 * 8 + 8) * 4
    assert torch_weight_bytes(LM(tied=True)) == 100 * 8 * 4 + body  # the head reads the table whole
    assert torch_weight_bytes(LM(tied=False)) == 100 * 8 * 4 + body  # the head's own; the table one row a token

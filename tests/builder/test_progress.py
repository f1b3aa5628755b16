"""What a build reports while it runs (issue 22 point 7): counts inside the long stages, and
stages skipped with the reason, through the `stage` callback the CLI renders on stderr."""

from __future__ import annotations

import contextlib

from ingot.builder.config import build_config
from ingot.builder.pipeline import build
from tests.models import TEXT


class Recorder:
    def __init__(self):
        self.updates: dict[str, list[tuple[str, int, int]]] = {}
        self.skipped: dict[str, str] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        recorder = self

        class Report:
            def update(self, what: str, done: int, total: int) -> None:
                recorder.updates.setdefault(name, []).append((what, done, total))

            def skip(self, why: str) -> None:
                recorder.skipped[name] = why

        yield Report()


def test_int4_awq_counts_its_samples_and_groups_and_the_gate_batches(llama_bundle, tmp_path):
    (tmp_path / "calib.txt").write_text(TEXT * 6)
    rec = Recorder()
    cfg = build_config(source=str(llama_bundle), output=tmp_path / "awq", quant="int4-awq", block_size=32,
                       calib=tmp_path / "calib.txt", calib_seq_len=32, calib_samples=8)
    build(cfg, rec.stage)
    counted = {what for what, _, _ in rec.updates["quantize int4-awq"]}
    assert counted == {"calibration sample", "AWQ group", "GPTQ group"}, counted
    for what in counted:
        seen = [(done, total) for w, done, total in rec.updates["quantize int4-awq"] if w == what]
        assert [done for done, _ in seen] == list(range(seen[0][1])), (what, seen)  # 0..total-1, in order
    assert {what for what, _, _ in next(v for k, v in rec.updates.items() if k.startswith("verify"))} == {"held-out batch"}
    assert rec.skipped == {}


def test_a_verify_that_does_not_run_is_reported_skipped(cnn_bundle, tmp_path):
    rec = Recorder()
    onnx = next(cnn_bundle.glob("targets/cpu-*/model.onnx"))
    build(build_config(source=str(onnx), output=tmp_path / "a"), rec.stage)
    assert list(rec.skipped.values()) == ["an .onnx source has no torch model to compare with"]
    build(build_config(source=str(cnn_bundle), output=tmp_path / "b"), rec.stage)
    assert list(rec.skipped.values())[-1] == "a bundle source has no torch model to compare with"
    rec.skipped.clear()
    build(build_config(source=str(onnx), output=tmp_path / "c", verify=False), rec.stage)
    assert list(rec.skipped.values()) == ["--no-verify"]

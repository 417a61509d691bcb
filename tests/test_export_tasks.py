"""Export of the other tasks: each graph runs in onnxruntime and matches PyTorch on sizes never traced."""

from __future__ import annotations

import json

import pytest

from rnnkit.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPECTED = {"classify": {"classify"}, "tag": {"emissions"}, "seq2seq": {"encoder", "decoder_step"},
            "forecast": {"forecast"}}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_every_task_exports_to_onnx_with_parity(task, task_runs, tmp_path, capsys):
    assert main(["export", str(task_runs[task]), "--format", "onnx", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["graphs"]) == EXPECTED[task]
    for graph in report["graphs"].values():
        assert graph["max_abs_diff"] < 1e-4
        assert (tmp_path / graph["file"]).stat().st_size > 0
    if task == "tag":
        assert report["tags"] and len(report["crf"]["transitions"]) == len(report["tags"])

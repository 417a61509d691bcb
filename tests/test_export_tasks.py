"""Export of the other tasks: each graph runs in onnxruntime and matches PyTorch on sizes never traced."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_forecast_graph_reads_a_history_of_any_length(task_runs, tmp_path, capsys):
    import onnxruntime as ort

    from rnnkit.tasks import runner

    assert main(["export", str(task_runs["forecast"]), "--format", "onnx", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["graphs"]["forecast"]["dynamic"]["history"] == {"0": "B", "1": "L"}
    run = runner.load(task_runs["forecast"])
    lookback, width = run.config.options.lookback, run.series_info["input_size"]
    session = ort.InferenceSession(str(tmp_path / "forecast.onnx"), providers=["CPUExecutionProvider"])
    for L in (lookback - 5, lookback, lookback + 17):
        history = torch.randn(2, L, width)
        future = torch.zeros(2, run.config.options.horizon, len(run.series_info["calendar"]))
        (got,) = session.run(None, {"history": history.numpy(), "future": future.numpy()})
        with torch.no_grad():
            expected = run.model(history, future)
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)

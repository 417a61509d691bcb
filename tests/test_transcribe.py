"""Speech recognition with CTC: the loss and the searches against brute force, streaming against the whole
recording, every bad input, the command line end to end, the service's audio stream and the microphone page.

The audio is made here: tones for letters (a 440 Hz, b 1000 Hz, c 1900 Hz), one word per tone, with pauses
and a little noise, at 8 kHz. A small unidirectional GRU learns them in a few seconds.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rnnkit import decoding
from rnnkit.cli import main
from rnnkit.config import RunConfig, UserError
from rnnkit.data.audio import FeatureSpec, FeatureStream, read_transcripts, stream_features
from rnnkit.models.transcriber import Transcriber

RATE = 8000
TONES = {"a": 440.0, "b": 1000.0, "c": 1900.0}


# --------------------------------------------------------------------------------------- audio


def tones(text: str, rng: np.random.Generator) -> np.ndarray:
    """One tone per word of `text` (each a letter), with pauses and light noise."""
    parts = [np.zeros(int(RATE * rng.uniform(0.05, 0.6)))]
    gain = rng.uniform(0.2, 0.6)
    for word in text.split():
        n = int(RATE * rng.uniform(0.12, 0.18))
        t = np.arange(n) / RATE
        envelope = np.minimum(1, np.minimum(t, t[::-1]) / 0.01)
        parts.append(gain * np.sin(2 * np.pi * TONES[word] * t) * envelope)
        parts.append(np.zeros(int(RATE * rng.uniform(0.04, 0.08))))
    parts.append(np.zeros(int(RATE * 0.1)))
    wave = np.concatenate(parts)
    return (wave + rng.normal(0, 0.003, len(wave))).astype(np.float32)


def write_manifest(folder: Path, rows: list[tuple[str, str]], name: str = "manifest.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "text"])
        writer.writerows(rows)
    return folder / name


def make_set(folder: Path, n: int, seed: int) -> Path:
    """n recordings of 1-4 tone words and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(list("abc"), size=int(rng.integers(1, 5))))
        sf.write(folder / f"u{i}.wav", tones(text, rng), RATE)
        rows.append((f"u{i}.wav", text))
    return write_manifest(folder, rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A unidirectional word-unit run trained on tones through the command line, and its data."""
    root = tmp_path_factory.mktemp("transcribe")
    train, valid = make_set(root / "train", 60, 0), make_set(root / "valid", 16, 1)
    code = main(["train", "transcribe", "--train", str(train), "--valid", str(valid), "--test", str(valid),
                 "--out", str(root / "run"), "--units", "word", "--sample-rate", str(RATE), "--n-mels", "20",
                 "--cell", "gru", "--hidden", "32", "--layers", "1", "--no-bidirectional", "--epochs", "12",
                 "--batch-size", "8", "--lr", "0.01", "--scheduler", "constant", "--threads", "1",
                 "--log-every", "1000"])
    assert code == 0
    return {"root": root, "run": root / "run", "train": train, "valid": valid}


# ------------------------------------------------------------------------------- brute force


def _paths_reading(T: int, V: int, blank: int = 0):
    """Every frame path of length T over V symbols, with the labelling it reads as."""
    for path in itertools.product(range(V), repeat=T):
        yield path, tuple(decoding.ctc_collapse(path, blank))


def _labelling_log_probs(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """log P(labelling) for every labelling: the sum over its paths."""
    T, V = log_probs.shape
    sums: dict[tuple[int, ...], float] = {}
    for path, label in _paths_reading(T, V):
        lp = float(sum(log_probs[t, u] for t, u in enumerate(path)))
        sums[label] = float(np.logaddexp(sums.get(label, -np.inf), lp))
    return sums


@pytest.mark.parametrize("stack", [1, 2])
def test_ctc_loss_is_minus_log_of_the_sum_over_alignments(stack):
    torch.manual_seed(stack)
    model = Transcriber(input_size=3, num_units=3, hidden_size=4, num_layers=1, cell="gru", bidirectional=False,
                        stack=stack)
    x = torch.randn(2, 8, 3)
    lengths = torch.tensor([8, 6])
    targets = torch.tensor([[1, 2], [2, 0]])
    target_lengths = torch.tensor([2, 1])
    out = model.loss({"inputs": x, "lengths": lengths, "targets": targets, "target_lengths": target_lengths})
    log_probs, steps = model(x, lengths)
    expected = []
    for b in range(2):
        lp = log_probs[b, :int(steps[b])].detach().double().numpy()
        table = _labelling_log_probs(lp)
        expected.append(-table[tuple(targets[b, :int(target_lengths[b])].tolist())])
    assert steps.tolist() == [math.ceil(8 / stack), math.ceil(6 / stack)]
    assert float(out.loss.detach()) == pytest.approx(float(np.mean(expected)), rel=1e-5)
    out.loss.backward()  # the loss reaches the weights
    assert model.output.weight.grad is not None and float(model.output.weight.grad.abs().sum()) > 0


def _random_log_probs(T: int, V: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (T, V))
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
def test_prefix_beam_search_finds_the_most_probable_labelling(seed):
    lp = _random_log_probs(5, 3, seed)
    table = _labelling_log_probs(lp)
    found = decoding.ctc_prefix_beam_search(lp, beam_size=100, prune=None, n_best=len(table))
    best = max(table, key=table.get)
    assert tuple(found[0].units) == best
    assert found[0].log_prob == pytest.approx(table[best], abs=1e-9)
    for h in found:  # every labelling kept carries the exact sum over its paths
        assert h.log_prob == pytest.approx(table[tuple(h.units)], abs=1e-9)


class _BigramScorer:
    """A fixed table of log P(unit | previous unit) (previous 0 at the start) and of ending."""

    def __init__(self, V: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.table = np.log(rng.dirichlet(np.ones(V + 1), size=V))  # (previous, next or end)
        self.table[:, 0] = -np.inf  # never the blank

    def next_scores(self, prefixes):
        return [self.table[p[-1] if p else 0, :-1] for p in prefixes]

    def end_score(self, prefix):
        return float(self.table[prefix[-1] if prefix else 0, -1])


@pytest.mark.parametrize("seed", range(3))
def test_prefix_beam_search_with_fusion_matches_brute_force(seed):
    V, weight, bonus = 3, 0.7, 0.3
    lp = _random_log_probs(5, V, seed + 10)
    scorer = _BigramScorer(V, seed)

    def fused(label):
        previous, total = 0, 0.0
        for u in label:
            total += weight * scorer.table[previous, u] + bonus
            previous = u
        return total + weight * scorer.table[previous, -1]

    table = {k: v + fused(k) for k, v in _labelling_log_probs(lp).items()}
    found = decoding.ctc_prefix_beam_search(lp, beam_size=200, prune=None, scorers=[(scorer, weight)],
                                            unit_bonus=bonus)
    best = max(table, key=table.get)
    assert tuple(found[0].units) == best
    assert found[0].score == pytest.approx(table[best], abs=1e-9)


def test_narrow_beam_keeps_the_greedy_answer_on_a_peaked_distribution():
    path = [1, 1, 0, 2, 0, 0, 2, 1]
    lp = np.full((len(path), 3), np.log(0.01))
    for t, u in enumerate(path):
        lp[t, u] = np.log(0.98)
    assert decoding.ctc_prefix_beam_search(lp, beam_size=2)[0].units == decoding.ctc_collapse(path) == [1, 2, 2, 1]


def test_greedy_merges_repeats_and_drops_blanks():
    assert decoding.ctc_collapse([0, 1, 1, 0, 1, 2, 2, 2, 0, 0]) == [1, 1, 2]
    assert decoding.ctc_segments([0, 1, 1, 0, 1, 2, 2, 2, 0, 0]) == [(1, 1, 3), (1, 4, 5), (2, 5, 8)]
    assert decoding.ctc_collapse([2, 2, 0, 3], previous=2) == [3]  # a repeat across chunks is one unit
    assert decoding.ctc_collapse([]) == []
    scores = torch.full((2, 4, 3), -5.0)
    for b, path in enumerate([[1, 1, 0, 1], [2, 0, 2, 2]]):
        for t, u in enumerate(path):
            scores[b, t, u] = 0.0
    assert decoding.ctc_greedy(scores, torch.tensor([4, 2])) == [[1, 1], [2]]


def test_lexicon_allows_only_listed_words():
    words = ["ab", "b"]
    units = {1: "a", 2: "b", 3: " "}

    def decode(ids):
        return "".join(units.get(i, "") for i in ids)

    scorer = decoding.LexiconScorer(words, decode, 4)
    row = scorer.next_scores([(1,)])[0]  # after "a": only "b" continues a word of the list
    assert row[2] == 0 and row[1] == -np.inf and row[3] == -np.inf
    assert scorer.end_score((1,)) == -np.inf and scorer.end_score((1, 2, 3, 2)) == 0.0
    # a path that reads "a" most probably, constrained to the list, becomes "ab"
    lp = np.log(np.array([[0.1, 0.8, 0.05, 0.05], [0.5, 0.1, 0.3, 0.1], [0.9, 0.04, 0.03, 0.03]]))
    found = decoding.ctc_prefix_beam_search(lp, beam_size=8, scorers=[(scorer, 1.0)], prune=None)
    assert decode(found[0].units) in ("ab", "b")
    assert decode(decoding.ctc_prefix_beam_search(lp, beam_size=8, prune=None)[0].units) == "a"


# ----------------------------------------------------------------------------------- streaming


def test_features_pushed_in_pieces_equal_the_whole_recording():
    rng = np.random.default_rng(0)
    wave = tones("a b c a", rng)
    spec = FeatureSpec(sample_rate=RATE, n_mels=20)
    whole = stream_features(wave, spec)
    stream, pieces, start = FeatureStream(spec), [], 0
    for size in itertools.cycle([1, 37, 400, 2500]):
        if start >= len(wave):
            break
        pieces.append(stream.push(wave[start:start + size]))
        start += size
    pieces.append(stream.finish())
    chunked = np.concatenate(pieces)
    assert chunked.shape == whole.shape == (len(wave) // (RATE // 100) + 1, 20)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("normalise,stack,cell", [("running", 3, "gru"), ("none", 2, "lstm"), ("running", 1, "rnn")])
def test_streaming_steps_equal_the_whole_pass(normalise, stack, cell):
    torch.manual_seed(0)
    model = Transcriber(5, 4, hidden_size=6, num_layers=2, cell=cell, bidirectional=False, stack=stack,
                        normalise=normalise).eval()
    x = torch.randn(1, 23, 5)
    whole, _ = model(x, torch.tensor([23]))
    state, parts, start = model.start_stream(), [], 0
    for size in [1, 4, 0, 7, 2, 9]:
        out, state = model.stream(x[:, start:start + size], state, final=start + size >= 23)
        parts.append(out)
        start += size
    streamed = torch.cat(parts, dim=1)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)


def test_a_bidirectional_model_refuses_to_stream():
    model = Transcriber(5, 4, hidden_size=6, num_layers=1, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        model.stream(torch.randn(1, 3, 5), model.start_stream())


def test_the_stream_of_a_run_gives_the_whole_file_transcript(trained):
    from rnnkit.tasks import runner
    from rnnkit.tasks.transcribe import TASK, transcribe

    run = runner.load(trained["run"])
    wav = trained["root"] / "valid" / "u3.wav"
    wave, _ = sf.read(wav, dtype="float32")
    stream = TASK.open_stream(run)
    partials = [stream.push(wave[i:i + 333]) for i in range(0, len(wave), 333)]
    final = stream.finish()
    assert final == transcribe(run, [wav])[0]["text"]
    assert partials[-1] in final and partials[0] == ""  # words appear as the audio arrives
    assert stream.push(wave) == final or stream.finish() == final  # the next recording starts afresh


# ---------------------------------------------------------------------------------- the command line


def test_cli_train_evaluate_predict(trained, capsys, tmp_path):
    capsys.readouterr()
    assert main(["evaluate", str(trained["run"]), "--data", str(trained["valid"]), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert 0 <= figures["wer"] <= 0.2 and 0 <= figures["cer"] <= 0.2, figures
    assert figures["loss"] > 0 and figures["count"] == 16 and figures["real_time_factor"] < 1
    # beam search with a word list gives the same here (the greedy answers are good already)
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("a\nb\nc\n", encoding="utf-8")
    assert main(["evaluate", str(trained["run"]), "--data", str(trained["valid"]), "--json", "--beam", "4",
                 "--lexicon", str(lexicon)]) == 0
    assert json.loads(capsys.readouterr().out)["wer"] <= figures["wer"] + 0.05
    # predict: a manifest in, one transcript per line out
    assert main(["predict", str(trained["run"]), "--input", str(trained["valid"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    gold = [it.text for it in read_transcripts(trained["valid"])]
    assert len(lines) == 16 and sum(a == b for a, b in zip(lines, gold, strict=True)) >= 13
    # plain WAV paths, JSONL out
    paths = tmp_path / "paths.txt"
    paths.write_text(f"{trained['root'] / 'valid' / 'u0.wav'}\n", encoding="utf-8")
    assert main(["predict", str(trained["run"]), "--input", str(paths), "--format", "jsonl"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["text"] == lines[0] and answer["seconds"] > 0
    # each word with the time it is heard, in order, inside the recording
    words = answer["words"]
    assert [w["word"] for w in words] == answer["text"].split()
    assert all(0 <= w["start"] < w["end"] <= answer["seconds"] + 0.03 for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:], strict=False))


def test_char_units_and_a_language_model_fuse(tmp_path, capsys):
    """Char units (spaces from pauses) and shallow fusion with a char language-model run: the fused search
    runs and an impossible weight of the language model changes nothing about the refusals."""
    from rnnkit.config import ModelConfig, TrainConfig
    from rnnkit.tasks.training import train

    data = make_set(tmp_path / "d", 24, 3)
    cfg = RunConfig.create("transcribe", model={"cell": "gru", "hidden_size": 16, "num_layers": 1,
                                                "bidirectional": True},
                           train={"epochs": 1, "batch_size": 8, "threads": 1, "log_every": 1000},
                           transcribe={"units": "char", "sample_rate": RATE, "n_mels": 16, "stack": 2})
    said = []
    train(cfg, data, tmp_path / "run", log=said.append)  # without --valid: a random part is held out
    assert any("holding out a random 5%" in line and "(1 recordings)" in line for line in said), said
    (tmp_path / "lm.txt").write_text("\n".join(["a b c", "c b a", "a a b"] * 30) + "\n", encoding="utf-8")
    lm_cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=8, hidden_size=16, num_layers=1),
                       train=TrainConfig(epochs=1, batch_size=4, bptt=16, log_every=10_000))
    train(lm_cfg, tmp_path / "lm.txt", tmp_path / "lm", log=lambda s: None)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", str(data), "--beam", "4", "--lm",
                 str(tmp_path / "lm"), "--lm-weight", "0.3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 24
    assert main(["predict", str(tmp_path / "run"), "--input", str(data), "--lm", str(tmp_path / "run")]) == 2
    assert "'lm'" in capsys.readouterr().err
    # a bidirectional run reads whole recordings: the service takes files, and refuses the stream plainly
    from fastapi.testclient import TestClient

    from rnnkit.serve import create_app

    client = TestClient(create_app(tmp_path / "run"))
    assert client.get("/info").json()["streaming"] is False
    assert "text" in client.post("/transcribe", content=(tmp_path / "d" / "u0.wav").read_bytes()).json()
    with client.websocket_connect("/transcribe/stream") as ws:
        assert "streaming needs a unidirectional run" in ws.receive_json()["error"]


# ---------------------------------------------------------------------------------------- bad input


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnkit: error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _train_argv(manifest, out):
    return ["train", "transcribe", "--train", str(manifest), "--out", str(out), "--sample-rate", str(RATE),
            "--epochs", "1"]


def test_every_bad_manifest_is_named_with_its_line(tmp_path, capsys):
    good = tmp_path / "good.wav"
    sf.write(good, tones("a", np.random.default_rng(0)), RATE)
    (tmp_path / "noise.wav").write_bytes(b"this is not audio")
    cases = {
        "missing": ([("good.wav", "a"), ("nowhere.wav", "b")], "line 3: no such file 'nowhere.wav'"),
        "not_audio": ([("good.wav", "a"), ("noise.wav", "b")], "line 3: "),
        "empty_text": ([("good.wav", "a"), ("good.wav", "  ")], "line 3: the transcript is empty"),
        "empty_path": ([("", "a")], "line 2: the path is empty"),
    }
    for name, (rows, expected) in cases.items():
        manifest = write_manifest(tmp_path, rows, f"{name}.csv")
        err = _error(capsys, _train_argv(manifest, tmp_path / f"run-{name}"))
        assert f"{name}.csv: {expected}" in err, err
        assert not (tmp_path / f"run-{name}").exists()  # nothing written
    assert "cannot read the audio" in _error(capsys, _train_argv(tmp_path / "not_audio.csv", tmp_path / "r"))
    (tmp_path / "header.csv").write_text("file,transcript\ngood.wav,a\n", encoding="utf-8")
    assert "header.csv: line 1: no column 'path'" in _error(capsys, _train_argv(tmp_path / "header.csv",
                                                                                  tmp_path / "r"))
    assert "no such manifest" in _error(capsys, _train_argv(tmp_path / "absent.csv", tmp_path / "r"))
    (tmp_path / "only_header.csv").write_text("path,text\n", encoding="utf-8")
    assert "no rows" in _error(capsys, _train_argv(tmp_path / "only_header.csv", tmp_path / "r"))


def test_bad_options_are_refused(tmp_path, capsys):
    manifest = write_manifest(tmp_path, [("x.wav", "a")])
    for flag, value, expected in [("--units", "phone", "invalid choice"), ("--speed-perturb", "fast", "--speed-perturb"),
                                  ("--speed-perturb", "0.1", "--speed-perturb"), ("--stack", "0", "--stack"),
                                  ("--pitch-perturb", "x", "--pitch-perturb")]:
        capsys.readouterr()
        try:
            code = main([*_train_argv(manifest, tmp_path / "r"), flag, value])
        except SystemExit as e:  # argparse refuses a choice itself
            code = e.code
        assert code == 2
        assert expected in capsys.readouterr().err


def test_a_transcript_outside_the_alphabet_and_bad_search_options(trained, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", tones("a", np.random.default_rng(0)), RATE)
    manifest = write_manifest(tmp_path, [("a.wav", "a"), ("a.wav", "a z")], "zed.csv")
    run = str(trained["run"])
    err = _error(capsys, ["evaluate", run, "--data", str(manifest)])
    assert "zed.csv: line 3: the transcript has 'z', outside the run's alphabet" in err
    assert "line 3" in _error(capsys, ["predict", run, "--input", str(manifest)])
    (tmp_path / "words.txt").write_text("a\nb\nqq\n", encoding="utf-8")
    err = _error(capsys, ["predict", run, "--input", str(trained["valid"]), "--lexicon", str(tmp_path / "words.txt")])
    assert "words.txt: line 3: the transcript has 'q'" in err
    assert "--beam" in _error(capsys, ["predict", run, "--input", str(trained["valid"]), "--beam", "0"])
    assert "--lm-weight" in _error(capsys, ["predict", run, "--input", str(trained["valid"]), "--lm-weight", "1"])
    assert "--lexicon: no such file" in _error(capsys, ["predict", run, "--input", str(trained["valid"]),
                                                        "--lexicon", str(tmp_path / "none.txt")])
    assert "--stride: not an option for transcribe" in _error(capsys, ["evaluate", run, "--data",
                                                                        str(trained["valid"]), "--stride", "2"])
    missing = tmp_path / "paths.txt"
    missing.write_text("nowhere.wav\n", encoding="utf-8")
    assert "line 1: no such file" in _error(capsys, ["predict", run, "--input", str(missing)])


# ---------------------------------------------------------------------------------------- the service


def test_service_streams_partial_transcripts_and_the_final_one(trained):
    from fastapi.testclient import TestClient

    from rnnkit.serve import create_app

    client = TestClient(create_app(trained["run"]))
    info = client.get("/info").json()
    assert info["task"] == "transcribe" and info["streaming"] is True and info["sample_rate"] == RATE
    wav = trained["root"] / "valid" / "u5.wav"
    whole = client.post("/transcribe", content=wav.read_bytes()).json()
    assert [w["word"] for w in whole["words"]] == whole["text"].split()
    wave, _ = sf.read(wav, dtype="float32")
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    with client.websocket_connect(f"/transcribe/stream?sample_rate={RATE}") as ws:
        for _ in range(2):  # two recordings on one connection
            partials = []
            for i in range(0, len(pcm), 1600):
                partials.append(ws.receive_json() if ws.send_bytes(pcm[i:i + 1600]) is None else None)
            ws.send_text("end")
            final = ws.receive_json()
            assert final["final"] == whole["text"] and final["seconds"] == pytest.approx(len(wave) / RATE, abs=1e-3)
            assert all("partial" in p for p in partials) and partials[-1]["partial"] == whole["text"]
    # float samples at another rate are resampled
    with client.websocket_connect("/transcribe/stream?sample_rate=16000&encoding=f32") as ws:
        from scipy.signal import resample_poly

        ws.send_bytes(resample_poly(wave, 2, 1).astype("<f4").tobytes())
        assert "partial" in ws.receive_json()
        ws.send_text('{"end": true}')
        assert ws.receive_json()["final"] == whole["text"]
    for query, sent, expected in [("?encoding=mp3", None, "encoding: expected s16 or f32"),
                                  ("?sample_rate=abc", None, "sample_rate: expected an integer"),
                                  ("", b"\x00\x01\x02", "whole 2-byte samples"),
                                  ("", "hello", "expected binary PCM or the text 'end'")]:
        with client.websocket_connect("/transcribe/stream" + query) as ws:
            if isinstance(sent, bytes):
                ws.send_bytes(sent)
            elif sent is not None:
                ws.send_text(sent)
            assert expected in ws.receive_json()["error"]
    bad = client.post("/transcribe", content=b"not audio")
    assert bad.status_code == 422 and bad.json()["error"].startswith("body: not a readable WAV")
    assert client.post("/transcribe", content=b"").json()["error"].startswith("body: empty")
    page = client.get("/").text
    assert "getUserMedia" in page and "/transcribe/stream" in page


# ------------------------------------------------------------------------------------- the page


def test_microphone_page_shows_the_words_as_they_come(trained, tmp_path):
    """Chromium's fake microphone plays a WAV file into the page; the page streams it to the service and
    shows the words, and the final transcript is the one the service gives for the file."""
    import httpx
    from test_serve_browser import CHROMEDRIVER, CHROMIUM, _need_browser, _serving

    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rng = np.random.default_rng(7)
    text = "a b c"
    wave = np.concatenate([tones(text, rng), np.zeros(RATE, dtype=np.float32)])  # speech, then a second of quiet
    wav = tmp_path / "mic.wav"
    sf.write(wav, wave, RATE, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        with _serving(trained["run"]) as url:
            expected = httpx.post(url + "/transcribe", content=wav.read_bytes()).json()["text"]
            assert expected == text
            driver.get(url + "/")
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: "transcribe run" in d.find_element(By.ID, "about").text)
            # keep every partial transcript the page shows (each lasts only until the next piece of audio)
            driver.execute_script("window.seen = []; new MutationObserver(() => seen.push("
                                  "document.getElementById('partial').textContent)).observe("
                                  "document.getElementById('partial'), {childList: true, characterData: true, "
                                  "subtree: true})")
            driver.find_element(By.ID, "start").click()
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-listening") == "1")
            # The pause after the speech ends the utterance (the fake microphone plays the file once, from the
            # moment the page opens it): its final transcript is kept.
            def finals(d):
                return [e.text for e in d.find_elements(By.CSS_SELECTOR, "#transcript div .t")]

            wait.until(lambda d: text in finals(d))
            # the words came as they were heard: partial transcripts that grow to the final one
            seen = [t for t in driver.execute_script("return window.seen") if t]
            assert "a" in seen and text in seen, seen
            driver.find_element(By.ID, "stop").click()
            assert driver.find_element(By.ID, "status").get_attribute("class") != "error"
    finally:
        driver.quit()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_espeak_speech_reads_as_a_manifest(tmp_path):
    """Speech synthesised by espeak-ng (any rate) goes through the same reader and features."""
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "s.wav"), "turn on the lights"], check=True)
    manifest = write_manifest(tmp_path, [("s.wav", "Turn  on the LIGHTS")])
    from rnnkit.tasks.transcribe import TASK

    items = TASK._items(manifest, lowercase=True)
    assert items[0].text == "turn on the lights"
    from rnnkit.data.audio import load_wav

    wave = load_wav(items[0].path, 16000)
    features = stream_features(wave, FeatureSpec(sample_rate=16000, n_mels=40))
    assert features.shape[1] == 40 and features.shape[0] == len(wave) // 160 + 1


def test_user_error_type_is_raised_from_python(tmp_path):
    with pytest.raises(UserError, match="no such manifest"):
        read_transcripts(tmp_path / "none.csv")


# ------------------------------------------------------------------------------ speaker robustness


def test_speed_and_pitch_perturbation():
    from rnnkit.data.audio import perturb

    rng = np.random.default_rng(0)
    wave = tones("a b", rng)
    fast = perturb(wave, RATE, speed=1.25)
    assert len(fast) == pytest.approx(len(wave) / 1.25, abs=2)  # shorter, as played faster
    shifted = perturb(wave, RATE, semitones=12.0)
    assert len(shifted) == len(wave)  # pitch alone keeps the length
    spectrum = np.abs(np.fft.rfft(shifted[: RATE // 2]))
    peak = np.fft.rfftfreq(RATE // 2, 1 / RATE)[spectrum.argmax()]
    assert peak == pytest.approx(2 * 440.0, rel=0.05)  # an octave up


def test_classify_audio_adds_perturbed_training_copies(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "d"
    folder.mkdir()
    rows = []
    for i in range(8):
        word = "ab"[i % 2]
        sf.write(folder / f"w{i}.wav", tones(word, rng), RATE)
        rows.append((f"w{i}.wav", word))
    train = folder / "train.csv"
    train.write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in rows[:6]), encoding="utf-8")
    valid = folder / "valid.csv"
    valid.write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in rows[6:]), encoding="utf-8")
    assert main(["train", "classify", "--audio", "--train", str(train), "--valid", str(valid), "--out",
                 str(tmp_path / "run"), "--sample-rate", str(RATE), "--speed-perturb", "0.9,1.1", "--pitch-perturb",
                 "2", "--hidden", "8", "--layers", "1", "--epochs", "1", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "18 perturbed copies added to the 6 training recordings" in err
    assert "24 training sequences" in err
    assert "--speed-perturb" in _error(capsys, ["train", "classify", "--audio", "--train", str(train), "--out",
                                                 str(tmp_path / "r2"), "--speed-perturb", "3"])


def test_export_to_onnx_matches_pytorch(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    capsys.readouterr()
    assert main(["export", str(trained["run"]), "--format", "onnx", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    graph = report["graphs"]["transcribe"]
    assert graph["outputs"] == ["log_probs", "steps"] and graph["max_abs_diff"] < 1e-4  # on sizes never traced
    assert report["blank"] == 0 and report["units"][0] == "<pad>" and report["features"]["sample_rate"] == RATE

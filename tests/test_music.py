"""The music task: exact likelihoods checked by brute force on a tiny keyboard, MIDI round trips and tempo
changes, every bad input's message, reproducible composition, and the command line end to end."""

from __future__ import annotations

import base64
import itertools
import json
import shutil

import mido
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from rnnkit import metrics
from rnnkit.cli import main
from rnnkit.config import MusicConfig, UserError
from rnnkit.data.music import N_KEYS, read_midi, read_musicxml, read_pieces, read_roll_json, roll_to_midi
from rnnkit.models.music import MusicModel
from rnnkit.tasks import music as music_task

# ----------------------------------------------------------------------------------------- the model


def _all_frames(K: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=K)))  # (2^K, K)


@pytest.mark.parametrize("output", ["autoregressive", "independent"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_probabilities_of_all_sequences_sum_to_one(output, cell):
    """Brute force on a 3-key keyboard: the likelihood of every one of the 2^(3*2) two-frame pieces, summed."""
    K, T = 3, 2
    model = MusicModel(K, hidden_size=6, cell=cell, output=output, pitch_hidden=5, pitch_window=2).double().eval()
    frames = _all_frames(K).double()
    rolls = torch.stack([torch.stack([a, b]) for a in frames for b in frames])  # (64, T, K)
    log_p = model.log_likelihood(rolls)
    assert log_p.shape == (2 ** (K * T),)
    assert_close(torch.logsumexp(log_p, 0), torch.zeros((), dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("output", ["autoregressive", "independent"])
def test_each_frame_distribution_sums_to_one_over_all_frames(output):
    K = 5
    model = MusicModel(K, hidden_size=7, output=output, pitch_hidden=6, pitch_window=3).double().eval()
    features, previous = torch.randn(3, 7, dtype=torch.float64), torch.randint(0, 2, (3, K)).double()
    frames = _all_frames(K).double()  # (32, K)
    total = torch.zeros(3, dtype=torch.float64)
    for frame in frames:
        f = frame.expand(3, K)
        logits = model.frame_logits(features, previous, f)
        total += torch.exp(-F.binary_cross_entropy_with_logits(logits, f, reduction="none").sum(-1))
    assert_close(total, torch.ones(3, dtype=torch.float64))


def test_loss_is_the_mean_negative_log_likelihood_per_frame():
    model = MusicModel(4, hidden_size=6, pitch_hidden=5, pitch_window=2).eval()
    rolls = (torch.rand(3, 6, 4) < 0.4).float()
    lengths = torch.tensor([6, 2, 4])
    for b, n in enumerate(lengths.tolist()):
        rolls[b, n:] = 0
    out = model.loss({"rolls": rolls, "lengths": lengths})
    assert out.count == 12
    assert_close(out.loss, -model.log_likelihood(rolls, lengths).sum() / 12)
    # a padded piece scores as it does alone
    assert_close(model.log_likelihood(rolls[1:2, :2]), model.log_likelihood(rolls, lengths)[1:2])


def test_greedy_choice_agrees_with_the_teacher_forced_conditionals():
    """Key by key (the generation path) and all keys at once (the training path) compute the same conditionals:
    each greedily chosen key is on exactly where its conditional logit, given the chosen keys below, is > 0."""
    model = MusicModel(12, hidden_size=8, pitch_hidden=6, pitch_window=4).eval()
    with torch.no_grad():
        model.key_logits.bias.normal_(0, 2)
        features, previous = torch.randn(20, 8), (torch.rand(20, 12) < 0.3).float()
        chosen = model.choose(features, previous)
        logits = model.frame_logits(features, previous, chosen)
    assert 0 < chosen.sum() < chosen.numel()
    assert torch.equal(chosen.bool(), logits > 0)


def test_a_wide_beam_finds_the_most_likely_frame_and_a_narrow_one_does_no_worse_than_greedy():
    K = 5
    model = MusicModel(K, hidden_size=8, pitch_hidden=6, pitch_window=2).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # strong ties between the keys, so that greedy choices go wrong
            p.normal_(0, 1.5)
        model.key_logits.weight.zero_()
        model.key_logits.bias.zero_()
        model.pitch_out.weight.mul_(3)
    features, previous = torch.randn(30, 8, dtype=torch.float64), (torch.rand(30, K) < 0.4).double()
    frames = _all_frames(K).double()

    def log_p(chosen):
        logits = model.frame_logits(features, previous, chosen)
        return -F.binary_cross_entropy_with_logits(logits, chosen, reduction="none").sum(-1)

    every = torch.stack([log_p(f.expand(30, K)) for f in frames], dim=1)  # (30, 32)
    exact = model.beam_choose(features, previous, beam=2 ** (K - 1))
    assert torch.equal(exact, frames[every.argmax(1)])
    greedy, narrow = model.beam_choose(features, previous, 1), model.beam_choose(features, previous, 3)
    assert torch.equal(greedy, model.choose(features, previous))
    assert bool((log_p(narrow) >= log_p(greedy) - 1e-12).all())
    assert bool((log_p(greedy) < every.max(1).values - 1e-9).any())  # greedy misses some: the test can tell


def test_sampling_follows_the_seed():
    model = MusicModel(10, hidden_size=8, pitch_hidden=6, pitch_window=3).eval()
    a = model.generate(12, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(12, temperature=1.0, generator=torch.Generator().manual_seed(5))
    c = model.generate(12, temperature=1.0, generator=torch.Generator().manual_seed(6))
    assert a.shape == (12, 10) and torch.equal(a, b) and not torch.equal(a, c)


def test_frame_accuracy_is_tp_over_tp_fp_fn():
    truth = np.array([[1, 1, 0, 0], [0, 1, 0, 1]])
    predicted = np.array([[1, 0, 1, 0], [0, 1, 0, 0]])
    assert metrics.frame_counts(truth, predicted) == (2, 1, 2)
    assert metrics.frame_accuracy(2, 1, 2) == pytest.approx(0.4)
    assert metrics.frame_accuracy(0, 0, 0) == 1.0


# ------------------------------------------------------------------------------------------ reading


def _random_roll(seed: int, T: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    roll = (rng.random((T, N_KEYS)) < 0.04).astype(np.uint8)
    roll[-1, 40] = 1  # the last frame sounds, so the file ends where the roll does
    return roll


@pytest.mark.parametrize("frames_per_beat", [1, 3, 4])
def test_roll_to_midi_and_back_is_the_same_roll(tmp_path, frames_per_beat):
    roll = _random_roll(frames_per_beat)
    data = roll_to_midi(roll, frames_per_beat, tempo=93.0)
    assert data == roll_to_midi(roll, frames_per_beat, tempo=93.0)  # the same bytes every time
    (tmp_path / "r.mid").write_bytes(data)
    assert np.array_equal(read_midi(tmp_path / "r.mid", frames_per_beat), roll)


def _midi_file(path, tracks, ticks_per_beat=480):
    """A type-1 MIDI file from tracks of (absolute tick, message) pairs."""
    out = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    for events in tracks:
        track = mido.MidiTrack()
        now = 0
        for tick, message in sorted(events, key=lambda e: e[0]):
            track.append(message.copy(time=tick - now))
            now = tick
        out.tracks.append(track)
    out.save(path)
    return path


def _note(start, end, pitch, channel=0):
    return [(start, mido.Message("note_on", note=pitch, velocity=90, channel=channel)),
            (end, mido.Message("note_off", note=pitch, velocity=0, channel=channel))]


def test_tempo_and_time_signature_changes_keep_the_grid_on_the_beat(tmp_path):
    """Four quarter notes; the tempo halves and the meter turns 3/4 after two of them. In seconds the last two
    are twice as long, on the grid each still lasts one beat; a second track is merged, drums are not read."""
    q = 240  # ticks per beat in this file
    meta = [(0, mido.MetaMessage("set_tempo", tempo=500_000)),
            (0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
            (2 * q, mido.MetaMessage("set_tempo", tempo=1_000_000)),
            (2 * q, mido.MetaMessage("time_signature", numerator=3, denominator=4))]
    melody = [e for i, p in enumerate([60, 62, 64, 65]) for e in _note(i * q, (i + 1) * q, p)]
    bass = _note(q // 2, 3 * q, 48, channel=1)
    drums = _note(0, 4 * q, 38, channel=9)
    path = _midi_file(tmp_path / "t.mid", [meta, melody, bass, drums], ticks_per_beat=q)

    import pretty_midi

    starts = sorted(n.start for i in pretty_midi.PrettyMIDI(str(path)).instruments for n in i.notes if n.pitch > 59)
    assert starts == pytest.approx([0.0, 0.5, 1.0, 2.0])  # the tempo change is in the file
    roll = read_midi(path, frames_per_beat=2)
    expected = np.zeros((8, N_KEYS), np.uint8)
    for i, p in enumerate([60, 62, 64, 65]):
        expected[2 * i:2 * i + 2, p - 21] = 1
    expected[1:6, 48 - 21] = 1
    assert np.array_equal(roll, expected)


def test_musicxml_is_read_on_the_same_grid(tmp_path):
    music21 = pytest.importorskip("music21")
    part = music21.stream.Part()
    part.append(music21.note.Note("C4", quarterLength=1))
    part.append(music21.chord.Chord(["E4", "G4"], quarterLength=2))
    path = tmp_path / "s.musicxml"
    music21.stream.Score([part]).write("musicxml", fp=str(path))
    roll = read_musicxml(path, frames_per_beat=2)
    assert roll.shape == (6, N_KEYS)
    assert [sorted(np.flatnonzero(f) + 21) for f in roll] == [[60], [60], [64, 67], [64, 67], [64, 67], [64, 67]]


def test_piano_roll_json_and_folders(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([[[60, 64], [], [67]], [[21, 108]]]))
    pieces = read_roll_json(tmp_path / "a.json")
    assert [p.roll.shape for p in pieces] == [(3, 88), (1, 88)]
    assert pieces[0].roll[0, 60 - 21] == 1 and pieces[1].roll[0, [0, 87]].tolist() == [1, 1]
    sub = tmp_path / "deeper"
    sub.mkdir()
    (sub / "b.mid").write_bytes(roll_to_midi(_random_roll(0), 4))
    (sub / "broken.mid").write_text("not midi")
    reading = read_pieces(tmp_path, 4)
    assert len(reading.pieces) == 3  # the folder is read recursively, the broken file skipped
    assert len(reading.skipped) == 1 and "broken.mid" in reading.skipped[0]


@pytest.mark.parametrize("name, content, expected", [
    ("x.mid", b"hello, not a midi file", r"x\.mid: not a readable MIDI file"),
    ("x.json", b'{"a": 1}', r"x\.json: expected a non-empty list of pieces"),
    ("x.json", b"[[[60], [20]]]", r"x\.json: piece 0, frame 1: pitch 20 \(G#0\) is outside the piano's keyboard"),
    ("x.json", b"[[[60]], [[], []]]", r"x\.json: piece 1: no notes in its 2 frames"),
    ("x.json", b"[[[60, \"C\"]]]", r"x\.json: piece 0, frame 0: expected a list of MIDI pitches"),
    ("x.json", b"[[60", r"x\.json: not valid JSON"),
    ("x.txt", b"60 64", r"x\.txt: unknown kind of file; expected MIDI"),
])
def test_bad_files_say_what_is_wrong(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=expected):
        read_pieces(tmp_path / name, 4)


def test_bad_midi_contents(tmp_path):
    drums_only = _midi_file(tmp_path / "drums.mid", [_note(0, 480, 38, channel=9)])
    with pytest.raises(UserError, match=r"drums\.mid: no notes \(drum tracks are not read\)"):
        read_midi(drums_only, 4)
    high = _midi_file(tmp_path / "high.mid", [_note(0, 480, 60) + _note(960, 1440, 110)])
    with pytest.raises(UserError, match=r"high\.mid: the note at beat 2: pitch 110 \(D8\) is outside"):
        read_midi(high, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: the folder has no MIDI, MusicXML or piano-roll JSON file"):
        read_pieces(tmp_path / "empty", 4)
    with pytest.raises(UserError, match=r"nowhere: no such file or folder"):
        read_pieces(tmp_path / "nowhere", 4)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(high, only_bad / "high.mid")
    with pytest.raises(UserError, match=r"bad: none of its 1 music files could be read; the first: .*pitch 110"):
        read_pieces(only_bad, 4)


def test_config_checks():
    with pytest.raises(UserError, match=r"--frames-per-beat: expected an integer >= 1; got 0"):
        MusicConfig(frames_per_beat=0)
    with pytest.raises(UserError, match=r"--output: expected one of autoregressive, independent"):
        MusicConfig(output="nade")
    with pytest.raises(UserError, match=r"--program: expected a General MIDI program in 0..127"):
        MusicConfig(program=128)


# ------------------------------------------------------------------------------------ command line


def _pieces(seed: int, n: int) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        root = int(rng.choice([48, 53, 55]))
        out.append([[root + s, root + s + 4, root + s + 7] if t % 2 == 0 else [root + s + 12]
                    for t, s in enumerate(int(x) for x in rng.choice([0, 5, 7], size=int(rng.integers(8, 16))))])
    return out


@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    (root / "train.json").write_text(json.dumps(_pieces(0, 24)))
    (root / "valid.json").write_text(json.dumps(_pieces(1, 4)))
    (root / "test.json").write_text(json.dumps(_pieces(2, 4)))
    code = main(["train", "music", "--train", str(root / "train.json"), "--valid", str(root / "valid.json"),
                 "--test", str(root / "test.json"), "--out", str(root / "run"), "--hidden", "16",
                 "--pitch-hidden", "8", "--pitch-window", "4", "--epochs", "2", "--batch-size", "8",
                 "--frames-per-beat", "2", "--lr", "0.01", "--threads", "1"])
    assert code == 0
    return root


def test_train_and_evaluate(capsys, music_run):
    capsys.readouterr()
    assert main(["evaluate", str(music_run / "run"), "--data", str(music_run / "test.json"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["pieces"] == 4 and figures["frames"] == sum(len(p) for p in _pieces(2, 4))
    assert 0 < figures["nll"] < 88 * np.log(2)  # better than a coin per key after training
    assert 0 <= figures["frame_accuracy"] <= 1 and figures["decoding"] == "greedy key by key"
    config = json.loads((music_run / "run" / "config.json").read_text())
    assert config["music"]["frames_per_beat"] == 2 and config["n_keys"] == 88


def test_inspect_follows_the_gradient_back_from_the_last_frame(capsys, music_run, tmp_path):
    capsys.readouterr()
    assert main(["inspect", str(music_run / "run"), "--data", str(music_run / "test.json"), "--out",
                 str(tmp_path), "--rows", "2"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["task"] == "music" and figures["rows"] == 2
    flow = figures["gradient_norm_by_distance"]
    assert flow["0"] > 0 and len(flow) == max(len(p) for p in _pieces(2, 4))
    assert (tmp_path / "gradient_flow.png").exists()


def test_generate_writes_the_same_midi_for_the_same_seed(capsys, music_run, tmp_path):
    run = str(music_run / "run")
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert main(["generate", run, "--out", str(tmp_path / f"{name}.mid"), "--steps", "12", "--seed", str(seed),
                     "--temperature", "1.0", *(["--plot", str(tmp_path / "a.png")] if name == "a" else [])]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["frames"] == 12 and result["seed"] == 7
    a, b, c = ((tmp_path / f"{n}.mid").read_bytes() for n in "abc")
    assert a == b and a != c
    assert mido.MidiFile(tmp_path / "a.mid").ticks_per_beat == 480
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    # a prompt is continued: the file starts with it
    assert main(["generate", run, "--out", str(tmp_path / "p.json"), "--prompt", str(tmp_path / "a.mid"),
                 "--steps", "5", "--seed", "1"]) == 0
    continued = json.loads((tmp_path / "p.json").read_text())[0]
    assert len(continued) == 12 + 5
    assert np.array_equal(read_roll_json(tmp_path / "p.json")[0].roll[:12], read_midi(tmp_path / "a.mid", 2)[:12])


def test_generate_audio_through_fluidsynth(capsys, music_run, tmp_path, monkeypatch):
    run = str(music_run / "run")
    monkeypatch.setattr(music_task.shutil, "which", lambda name: None)
    assert main(["generate", run, "--out", str(tmp_path / "a.mid"), "--audio", str(tmp_path / "a.wav")]) == 2
    assert "--audio: the fluidsynth program not installed; on Debian or Ubuntu: apt-get install fluidsynth " \
           "fluid-soundfont-gm" in capsys.readouterr().err
    assert not (tmp_path / "a.mid").exists()  # refused before anything is written
    monkeypatch.undo()
    try:
        music_task._fluidsynth()
    except UserError as e:
        pytest.skip(f"no FluidSynth here: {e}")
    assert main(["generate", run, "--out", str(tmp_path / "a.mid"), "--steps", "4", "--seed", "0",
                 "--audio", str(tmp_path / "a.wav")]) == 0
    assert (tmp_path / "a.wav").read_bytes()[:4] == b"RIFF"


@pytest.mark.parametrize("argv, expected", [
    (["--out", "x.mid", "--top-k", "3"], "--top-k: not an option for music runs"),
    (["--steps", "3"], "--out: music runs write a file; give --out FILE.mid"),
    (["--out", "x.wav"], "--out x.wav: expected a .mid, .midi or .json file name"),
    (["--out", "x.mid", "--steps", "0"], "--steps: expected an integer in 1..1000000; got 0"),
    (["--out", "x.mid", "--prompt", "nowhere.mid"], "nowhere.mid: no such file or folder"),
])
def test_generate_refuses_bad_options(capsys, music_run, tmp_path, argv, expected):
    capsys.readouterr()
    assert main(["generate", str(music_run / "run"), *argv]) == 2
    assert expected in capsys.readouterr().err


def test_predict_scores_each_piece_and_lm_refuses_music_options(capsys, music_run, tmp_path):
    from rnnkit.tasks import runner

    run = runner.load(music_run / "run")
    assert main(["predict", str(music_run / "run"), "--input", str(music_run / "test.json"), "--output",
                 str(tmp_path / "scores.csv")]) == 0
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "piece,frames,nll,log_likelihood" and len(lines) == 5
    name, frames, nll, total = lines[1].split(",")
    roll = torch.from_numpy(read_roll_json(music_run / "test.json")[0].roll).float()[None]
    assert name == "test.json#0" and int(frames) == roll.shape[1]
    assert float(total) == pytest.approx(float(run.model.log_likelihood(roll)), abs=1e-4)
    assert float(nll) == pytest.approx(-float(total) / int(frames), abs=1e-5)
    figures = runner.evaluate(music_run / "run", music_run / "test.json")
    totals = [float(line.split(",")[3]) for line in lines[1:]]
    assert -sum(totals) / figures["frames"] == pytest.approx(figures["nll"], rel=1e-5)  # the same likelihood
    assert main(["predict", str(music_run / "run")]) == 2
    assert "--input: music runs read MIDI, MusicXML or piano-roll JSON files" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("la la la\n" * 40)
    assert main(["train", "lm", "--train", str(tmp_path / "t.txt"), "--out", str(tmp_path / "lm"), "--embed", "4",
                 "--hidden", "8", "--layers", "1", "--epochs", "1", "--bptt", "16", "--batch-size", "4"]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "lm"), "--out", "x.mid", "--steps", "3"]) == 2
    assert "--out, --steps: not an option for lm runs" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "lm"), "--max-tokens", "5", "--seed", "1"]) == 0


def test_service_composes(music_run):
    from fastapi.testclient import TestClient

    from rnnkit.serve import create_app

    client = TestClient(create_app(music_run / "run"))
    assert 'id="roll"' in client.get("/").text
    info = client.get("/info").json()
    assert info["task"] == "music" and info["frames_per_beat"] == 2
    body = {"inputs": [{"steps": 6, "seed": 3}, {"steps": 6, "seed": 3, "prompt": [[60, 64], [67]]}]}
    first, second = client.post("/predict", json=body).json()["predictions"]
    assert len(first["frames"]) == 6 and second["prompt_frames"] == 2 and second["frames"][:2] == [[60, 64], [67]]
    assert base64.b64decode(first["midi"])[:4] == b"MThd"
    assert client.post("/predict", json=body).json()["predictions"][0] == first  # the seed fixes the music
    bad = client.post("/predict", json={"inputs": [{"steps": 0}]})
    assert bad.status_code == 422 and bad.json()["error"].startswith("inputs.0.steps: expected an integer")
    assert client.post("/predict", json={"inputs": [{"prompt": [[200]]}]}).json()["error"] == (
        "inputs.0.prompt, frame 0: pitch 200 (G#15) is outside the piano's keyboard; expected MIDI 21..108 (A0..C8)")

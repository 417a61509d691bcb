"""Audio classification: manifests, WAV reading and resampling, features, scaling, and the CLI end to end."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import soundfile as sf

from rnnkit.cli import main
from rnnkit.config import UserError
from rnnkit.data.audio import (
    FeatureScaler,
    FeatureSpec,
    compute_features,
    load_features,
    load_wav,
    read_manifest,
)


def _tone(freq: float, rate: int, seconds: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_load_wav_resamples_keeping_pitch_and_duration(tmp_path, rate):
    path = tmp_path / "t.wav"
    sf.write(path, _tone(440.0, rate, 0.5), rate, subtype="PCM_16")
    wave = load_wav(path, 8000)
    assert wave.dtype == np.float32 and wave.shape == (4000,)
    assert abs(_peak_hz(wave, 8000) - 440.0) <= 2.0


def test_stereo_is_mixed_to_mono(tmp_path):
    path = tmp_path / "s.wav"
    left, right = _tone(300, 8000), _tone(300, 8000, seed=1)
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    np.testing.assert_allclose(load_wav(path, 8000), (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_features_match_librosa_and_frame_every_10ms(kind):
    spec = FeatureSpec(kind=kind, sample_rate=8000, n_mels=32, n_mfcc=13)
    wave = _tone(1000.0, 8000, 0.5)
    feats = compute_features(wave, spec)
    assert feats.shape == (1 + 4000 // 80, spec.size)
    mel = librosa.feature.melspectrogram(y=wave, sr=8000, n_fft=256, hop_length=80, win_length=200, n_mels=32)
    log_mel = 10 * np.log10(np.maximum(mel, 1e-10))
    expected = log_mel if kind == "logmel" else librosa.feature.mfcc(S=log_mel, n_mfcc=13)
    np.testing.assert_allclose(feats, expected.T, rtol=1e-4, atol=1e-3)
    if kind == "logmel":
        # The loudest band of a 1 kHz tone is the one whose centre is nearest 1 kHz.
        centres = librosa.mel_frequencies(n_mels=34, fmax=4000)[1:-1]
        assert abs(centres[feats[10].argmax()] - 1000) < 150


def test_recording_mean_removes_a_constant_gain():
    """Less its own mean, a recording's log-mel features do not change when the recording is louder."""
    wave = _tone(700.0, 8000, 0.4)
    spec = FeatureSpec(n_mels=24, recording_mean=True)
    quiet, loud = compute_features(wave, spec), compute_features(4 * wave, spec)
    np.testing.assert_allclose(quiet.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(quiet, loud, atol=1e-2)
    plain = FeatureSpec(n_mels=24)
    assert not np.allclose(compute_features(wave, plain), compute_features(4 * wave, plain), atol=1)


def test_scaler_standardises_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    feats = [rng.normal(5.0, 3.0, size=(n, 4)).astype(np.float32) for n in (10, 20, 7)]
    scaler = FeatureScaler.fit(feats)
    scaled = np.concatenate([scaler(f) for f in feats])
    np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(0), 1, atol=1e-4)
    spec = FeatureSpec(kind="mfcc", n_mfcc=4)
    scaler.save(tmp_path, spec)
    again, spec_again = FeatureScaler.load(tmp_path)
    assert spec_again == spec
    np.testing.assert_allclose(again(feats[0]), scaler(feats[0]), rtol=1e-6)


# ---------------------------------------------------------------------------------- bad input


def _corpus(folder, n_per_class=12, rate=8000):
    """Low tones are 'low', high tones 'high'; sample rates vary; paths relative to the manifest."""
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_per_class):
        for label, base in (("low", 300.0), ("high", 1500.0)):
            r = rate if i % 3 else 16000
            name = f"wav/{label}_{i}.wav"
            sf.write(folder / name, _tone(base * (1 + 0.05 * (i % 4)), r, 0.2 + 0.02 * (i % 5), seed=i), r)
            rows.append((name, label))
    return rows


def _manifest(path, rows):
    path.write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in rows))
    return path


def test_manifest_paths_are_relative_to_the_manifest(tmp_path):
    rows = _corpus(tmp_path / "data", 2)
    items = read_manifest(_manifest(tmp_path / "data" / "m.csv", rows))
    assert items[0].path == tmp_path / "data" / rows[0][0] and items[0].label == rows[0][1]
    assert items[1].where == "row 3"


def test_manifest_missing_file_and_column(tmp_path):
    path = _manifest(tmp_path / "m.csv", [("nowhere.wav", "a")])
    with pytest.raises(UserError, match=r"m\.csv: row 2: no such file 'nowhere\.wav'"):
        read_manifest(path)
    path.write_text("file,label\nx.wav,a\n")
    with pytest.raises(UserError, match=r"no column 'path'; the header has: 'file', 'label'"):
        read_manifest(path)
    with pytest.raises(UserError, match="no such manifest"):
        read_manifest(tmp_path / "absent.csv")


def test_unreadable_wav_is_named_or_skipped_with_a_count(tmp_path):
    rows = _corpus(tmp_path, 1)
    (tmp_path / "wav" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    items = read_manifest(_manifest(tmp_path / "m.csv", [*rows, ("wav/broken.wav", "low")]))
    spec = FeatureSpec()
    with pytest.raises(UserError, match=r"broken\.wav: cannot read the audio .*row 4; --skip-unreadable"):
        load_features(items, spec)
    features, kept, skipped = load_features(items, spec, skip_unreadable=True)
    assert len(features) == len(kept) == 2 and len(skipped) == 1 and "broken.wav" in skipped[0]


# ------------------------------------------------------------------------------------ end to end


def test_audio_train_evaluate_predict(tmp_path, capsys):
    data = tmp_path / "data"
    rows = _corpus(data, 12)
    train = _manifest(data / "train.csv", rows[:16] + rows[20:])
    valid = _manifest(data / "valid.csv", rows[16:20])
    run = tmp_path / "run"
    code = main(["train", "classify", "--audio", "--train", str(train), "--valid", str(valid), "--out", str(run),
                 "--features", "mfcc", "--n-mfcc", "13", "--cell", "gru", "--hidden", "16", "--layers", "1",
                 "--pooling", "mean", "--epochs", "8", "--lr", "0.02", "--batch-size", "8", "--threads", "1"])
    assert code == 0
    capsys.readouterr()
    scaler = json.loads((run / "scaler.json").read_text())
    assert scaler["features"]["kind"] == "mfcc" and len(scaler["mean"]) == 13
    assert main(["evaluate", str(run), "--data", str(train), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["accuracy"] >= 0.9 and set(figures["per_class"]) == {"high", "low"}
    queries = _manifest(data / "query.csv", [rows[0], rows[1]])
    assert main(["predict", str(run), "--input", str(queries), "--format", "jsonl"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["label"] for a in answers] == [rows[0][1], rows[1][1]]
    assert sum(answers[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_audio_unseen_validation_label(tmp_path, capsys):
    data = tmp_path / "data"
    rows = _corpus(data, 2)
    train = _manifest(data / "train.csv", rows)
    valid = _manifest(data / "valid.csv", [(rows[0][0], "middle")])
    code = main(["train", "classify", "--audio", "--train", str(train), "--valid", str(valid), "--out",
                 str(tmp_path / "run"), "--threads", "1"])
    assert code == 2
    assert "valid.csv: row 2: label 'middle' was not in the training data" in capsys.readouterr().err

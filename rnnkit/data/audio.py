"""Audio for classification and speech recognition: manifests, reading, resampling, features, normalisation.

What is here: `read_manifest` (a CSV with columns `path` and `label`; paths relative to the manifest or
absolute), `load_wav` (soundfile, mixed to mono, resampled with scipy's polyphase filter),
`FeatureSpec` and `compute_features` (librosa's mel spectrogram and MFCC: 25 ms windows every 10 ms;
optionally less each recording's own mean),
`FeatureScaler` (per-feature mean and standard deviation fitted on training frames, saved as JSON), and
`load_features` (all of it for a list of files, with an explicit choice to skip unreadable files); for
speech recognition, `read_transcripts` (a CSV with columns `path` and `text`, errors naming the line),
`perturb` (speed and pitch perturbation) and `FeatureStream` / `stream_features` (log-mel frames of audio
pushed in pieces, equal to those of the whole recording).
What is not: models, batching and any hand-written signal processing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rnnkit.config import UserError
from rnnkit.io import atomic_write_text

SCALER_FILE = "scaler.json"
WINDOW_S = 0.025  # analysis window
HOP_S = 0.010  # frame step


@dataclass
class AudioItem:
    """One manifest row: the resolved WAV path, its label (None when the manifest has none) and its row."""

    path: Path
    label: str | None
    where: str


def read_manifest(path: str | Path, label_required: bool = True) -> list[AudioItem]:
    """Read a manifest CSV (`path`, `label` columns; any others ignored) and check that every file exists."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such manifest (expected a CSV with columns path,label)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the manifest is empty (expected a header path,label and one row per file)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid CSV manifest: {e}") from None
    columns = ["path", "label"] if label_required else ["path"]
    for name in columns:
        if name not in frame.columns:
            found = ", ".join(repr(c) for c in frame.columns)
            raise UserError(f"{path}: no column '{name}'; the header has: {found} (expected path,label)")
    if frame.empty:
        raise UserError(f"{path}: the manifest has a header but no rows")
    has_label = "label" in frame.columns
    items = []
    for i, row in enumerate(frame.itertuples(index=False), start=2):  # row 1 is the header
        where = f"row {i}"
        wav = str(row.path).strip()
        if not wav:
            raise UserError(f"{path}: {where}: the path is empty; expected a WAV file")
        resolved = Path(wav) if Path(wav).is_absolute() else path.parent / wav
        if not resolved.is_file():
            raise UserError(f"{path}: {where}: no such file {wav!r} (looked for {resolved})")
        label = str(row.label).strip() if has_label else None
        if label_required and not label:
            raise UserError(f"{path}: {where}: the label is empty; expected a class name")
        items.append(AudioItem(resolved, label, where))
    return items


def load_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """A WAV file as mono float32 samples at `sample_rate` (resampled when the file has another rate).

    Raises:
        UserError: the file cannot be read as audio, or holds no samples.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except Exception as e:  # soundfile raises its own error type, and RuntimeError for damaged files
        raise UserError(f"{path}: cannot read the audio ({e}); expected a WAV file") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: the file holds no samples; expected a recording")
    wave = data.mean(axis=1)  # (N,) mono
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return wave


@dataclass
class FeatureSpec:
    """What features a run computes from audio."""

    kind: str = "logmel"  # "logmel" or "mfcc"
    sample_rate: int = 8000
    n_mels: int = 40
    n_mfcc: int = 13
    recording_mean: bool = False  # subtract each recording's own mean per feature (cepstral mean normalisation)

    @property
    def size(self) -> int:
        """Features per frame (F)."""
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels


def compute_features(wave: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Log-mel spectrogram or MFCC of mono samples: (T, F) float32, one frame every 10 ms."""
    import librosa

    win = int(round(WINDOW_S * spec.sample_rate))
    hop = int(round(HOP_S * spec.sample_rate))
    n_fft = 1 << (win - 1).bit_length()  # the next power of two holding the window
    mel = librosa.feature.melspectrogram(y=wave, sr=spec.sample_rate, n_fft=n_fft, hop_length=hop,
                                         win_length=win, n_mels=spec.n_mels, power=2.0)  # (M, T)
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)  # (M, T)
    if spec.kind == "mfcc":
        out = librosa.feature.mfcc(S=log_mel, n_mfcc=spec.n_mfcc)  # (C, T)
    else:
        out = log_mel
    if spec.recording_mean:
        # A fixed filter (microphone, room, vocal tract) adds a constant to every log-spectral frame.
        out = out - out.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(out.T, dtype=np.float32)  # (T, F)


class FeatureScaler:
    """Per-feature standardisation: (x - mean) / std, fitted on the training frames."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(cls, features: list[np.ndarray]) -> FeatureScaler:
        frames = np.concatenate(features, axis=0).astype(np.float64)  # (sum T, F)
        std = frames.std(axis=0)
        return cls(frames.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def save(self, directory: str | Path, spec: FeatureSpec) -> Path:
        payload = {"features": asdict(spec), "mean": self.mean.tolist(), "std": self.std.tolist()}
        return atomic_write_text(Path(directory) / SCALER_FILE, json.dumps(payload, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> tuple[FeatureScaler, FeatureSpec]:
        path = Path(directory) / SCALER_FILE
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            spec = FeatureSpec(**payload["features"])
            scaler = cls(np.array(payload["mean"]), np.array(payload["std"]))
        except FileNotFoundError:
            raise UserError(f"{path}: not found (an audio run keeps its feature scaler there)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a valid feature scaler file ({e})") from None
        if scaler.mean.shape != (spec.size,) or scaler.std.shape != (spec.size,):
            raise UserError(f"{path}: mean/std have {scaler.mean.shape[0]} values; the features have {spec.size}")
        return scaler, spec


def load_features(items: list[AudioItem], spec: FeatureSpec, skip_unreadable: bool = False
                  ) -> tuple[list[np.ndarray], list[AudioItem], list[str]]:
    """Features of every item: (features (T, F) per kept item, the kept items, messages of skipped files).

    An unreadable file stops everything with its name, unless `skip_unreadable`: then it is left out
    and its message returned, so that the caller can report the count.
    """
    features, kept, skipped = [], [], []
    for item in items:
        try:
            wave = load_wav(item.path, spec.sample_rate)
        except UserError as e:
            if not skip_unreadable:
                raise UserError(f"{e} (manifest {item.where}; --skip-unreadable leaves such files out)") from None
            skipped.append(f"{item.where}: {e}")
            continue
        features.append(compute_features(wave, spec))
        kept.append(item)
    return features, kept, skipped


# ----------------------------------------------------------------------------- speech recognition


@dataclass
class Utterance:
    """One row of a transcript manifest: the resolved audio path, its transcript and its line."""

    path: Path
    text: str
    where: str


def read_transcripts(path: str | Path, text_required: bool = True) -> list[Utterance]:
    """Read a transcript manifest: CSV with a header holding `path` and `text` (other columns ignored).

    Paths are relative to the manifest's folder or absolute; each must exist. Errors name the manifest's
    line (the header is line 1).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such manifest (expected a CSV with a header path,text)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the manifest is empty (expected a header path,text and one row per file)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid CSV manifest: {e}") from None
    needed = ["path", "text"] if text_required else ["path"]
    for name in needed:
        if name not in frame.columns:
            found = ", ".join(repr(c) for c in frame.columns)
            raise UserError(f"{path}: line 1: no column '{name}'; the header has: {found} (expected path,text)")
    has_text = "text" in frame.columns
    items = []
    for i, row in enumerate(frame.itertuples(index=False), start=2):  # line 1 is the header
        where = f"line {i}"
        wav = str(row.path).strip()
        if not wav:
            if not any(str(v).strip() for v in row):
                continue  # a blank line
            raise UserError(f"{path}: {where}: the path is empty; expected an audio file (WAV or FLAC)")
        resolved = Path(wav) if Path(wav).is_absolute() else path.parent / wav
        if not resolved.is_file():
            raise UserError(f"{path}: {where}: no such file {wav!r} (looked for {resolved})")
        text = " ".join(str(row.text).split()) if has_text else ""
        if text_required and not text:
            raise UserError(f"{path}: {where}: the transcript is empty; expected the words spoken in {wav}")
        items.append(Utterance(resolved, text, where))
    if not items:
        raise UserError(f"{path}: the manifest has a header but no rows")
    return items


def perturb(wave: np.ndarray, sample_rate: int, speed: float = 1.0, semitones: float = 0.0) -> np.ndarray:
    """A recording spoken faster or slower (`speed`, which shifts the pitch too, as a tape would) and
    shifted in pitch alone (`semitones`, librosa's phase vocoder)."""
    import librosa
    from scipy.signal import resample_poly

    out = wave
    if semitones:
        out = librosa.effects.pitch_shift(out, sr=sample_rate, n_steps=semitones).astype(np.float32)
    if speed != 1.0:
        up, down = 100, int(round(100 * speed))
        g = math.gcd(up, down)
        out = resample_poly(out, up // g, down // g).astype(np.float32)
    return out


class FeatureStream:
    """Log-mel frames of audio that arrives in pieces, equal to the frames of the whole recording.

    The analysis does not centre frames on reflected padding (which needs the end of the recording):
    the signal starts after half a window of zeros, and `finish` adds half a window of zeros at its end,
    so that whole-file features (`stream_features`) and features pushed piece by piece are the same
    frames. Each frame is librosa's mel spectrogram of one window.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        if spec.kind != "logmel" or spec.recording_mean:
            raise ValueError("FeatureStream computes plain log-mel features")
        self.spec = spec
        self.win = int(round(WINDOW_S * spec.sample_rate))
        self.hop = int(round(HOP_S * spec.sample_rate))
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.buffer = np.zeros(self.n_fft // 2, dtype=np.float32)
        self.samples = 0  # samples received

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples (N,) float32; returns the frames (T, F) they complete (T may be 0)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples += samples.shape[0]
        self.buffer = np.concatenate([self.buffer, samples])
        return self._frames()

    def finish(self) -> np.ndarray:
        """The last frames (T, F), once the recording has ended."""
        self.buffer = np.concatenate([self.buffer, np.zeros(self.n_fft // 2, dtype=np.float32)])
        return self._frames()

    def _frames(self) -> np.ndarray:
        import librosa

        count = 0 if self.buffer.shape[0] < self.n_fft else 1 + (self.buffer.shape[0] - self.n_fft) // self.hop
        if count == 0:
            return np.zeros((0, self.spec.n_mels), dtype=np.float32)
        used = self.n_fft + (count - 1) * self.hop
        mel = librosa.feature.melspectrogram(y=self.buffer[:used], sr=self.spec.sample_rate, n_fft=self.n_fft,
                                             hop_length=self.hop, win_length=self.win, n_mels=self.spec.n_mels,
                                             power=2.0, center=False)  # (M, T)
        self.buffer = self.buffer[count * self.hop:]
        log_mel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)  # (M, T)
        return np.ascontiguousarray(log_mel.T, dtype=np.float32)  # (T, F)


def stream_features(wave: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Log-mel frames (T, F) of a whole recording, as `FeatureStream` computes them piece by piece."""
    stream = FeatureStream(spec)
    first = stream.push(wave)
    return np.concatenate([first, stream.finish()], axis=0)

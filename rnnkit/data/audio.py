"""Audio for classification: WAV manifests, reading and resampling, log-mel/MFCC features, normalisation.

What is here: `read_manifest` (a CSV with columns `path` and `label`; paths relative to the manifest or
absolute), `load_wav` (soundfile, mixed to mono, resampled with scipy's polyphase filter),
`FeatureSpec` and `compute_features` (librosa's mel spectrogram and MFCC: 25 ms windows every 10 ms;
optionally less each recording's own mean),
`FeatureScaler` (per-feature mean and standard deviation fitted on training frames, saved as JSON), and
`load_features` (all of it for a list of files, with an explicit choice to skip unreadable files).
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

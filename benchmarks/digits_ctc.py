"""Connected digits: a CTC transcriber on strings of Free Spoken Digit clips, for known and unknown voices.

The script builds its own data from `fsdd/recordings/{digit}_{speaker}_{index}.wav` (8 kHz): strings of 2-7
digits, each string spoken by one speaker (clips of that speaker joined with random pauses of 50-400 ms,
each clip at a random gain, light white noise at 25-35 dB SNR). Five speakers are heard in training, the
sixth (`--held-out`, default jackson, the first of speakers.tsv) never:

- train: `--train-strings` strings from clips 5-49 of the five speakers (and, with `--synthetic N`, N more
  spoken by espeak-ng voices at several speeds and pitches: synthetic extra speakers);
- valid: `--valid-strings` other strings from the same clips (it picks the best epoch);
- test_seen: `--test-strings` strings from clips 0-4 of the five speakers (new recordings, known voices);
- test_unseen: `--test-strings` strings from all clips of the sixth speaker (a voice never heard).

Targets: WER at most 0.03 on test_seen and at most 0.15 on test_unseen. Word units (the ten digit names).

    python benchmarks/digits_ctc.py --data ../shared/data --out runs/bench-digits-ctc --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from bench_common import environment, train_seconds

from rnnkit.config import RunConfig
from rnnkit.tasks import runner, training

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RATE = 8000
TARGET_SEEN, TARGET_UNSEEN = 0.03, 0.15


def _clips(folder: Path) -> dict[tuple[str, int], list[tuple[Path, int]]]:
    """(speaker, digit) -> [(path, index)]."""
    out: dict[tuple[str, int], list[tuple[Path, int]]] = {}
    for wav in sorted((folder / "recordings").glob("*.wav")):
        digit, speaker, index = wav.stem.split("_")
        out.setdefault((speaker, int(digit)), []).append((wav.resolve(), int(index)))
    if not out:
        raise SystemExit(f"no recordings in {folder / 'recordings'}")
    return out


def _read(path: Path) -> np.ndarray:
    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == RATE, f"{path}: {rate} Hz"
    return wave.mean(axis=1)


def _noisy(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light white noise at a random 25-35 dB signal-to-noise ratio."""
    power = float(np.mean(wave ** 2)) + 1e-12
    snr = rng.uniform(25, 35)
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), wave.shape)
    return np.clip(wave + noise, -1, 1).astype(np.float32)


def _string(clips, speaker: str, indices: range, rng: np.random.Generator, cache: dict) -> tuple[np.ndarray, str]:
    digits = rng.integers(0, 10, size=int(rng.integers(2, 8)))
    parts = [np.zeros(int(RATE * rng.uniform(0.1, 0.3)), dtype=np.float32)]
    for i, d in enumerate(digits):
        choices = [p for p, idx in clips[(speaker, int(d))] if idx in indices]
        path = choices[int(rng.integers(len(choices)))]
        if path not in cache:
            cache[path] = _read(path)
        parts.append(cache[path] * rng.uniform(0.6, 1.4))
        if i + 1 < len(digits):
            parts.append(np.zeros(int(RATE * rng.uniform(0.05, 0.4)), dtype=np.float32))
    parts.append(np.zeros(int(RATE * rng.uniform(0.1, 0.3)), dtype=np.float32))
    return _noisy(np.concatenate(parts), rng), " ".join(NAMES[d] for d in digits)


def _write(folder: Path, rows: list[tuple[np.ndarray, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "manifest.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "text"])
        for i, (wave, text) in enumerate(rows):
            sf.write(folder / f"{i:05d}.wav", wave, RATE)
            writer.writerow([f"{i:05d}.wav", text])
    return folder / "manifest.csv"


ESPEAK_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc"]
ESPEAK_VARIANTS = ["", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4", "+klatt", "+croak"]


def _espeak(text: str, rng: np.random.Generator, workdir: Path) -> np.ndarray:
    """A string of digit names spoken by a random espeak-ng voice, variant, speed and pitch, at 8 kHz."""
    from scipy.signal import resample_poly

    voice = ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))]
    voice += ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))]
    out = workdir / "espeak.wav"
    gap = int(rng.integers(0, 40))  # extra pause between words, in units of 10 ms
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(120, 220))), "-p",
                    str(int(rng.integers(20, 80))), "-g", str(gap), "-w", str(out), text], check=True)
    wave, rate = sf.read(str(out), dtype="float32", always_2d=True)
    wave = resample_poly(wave.mean(axis=1), RATE, rate).astype(np.float32)  # 22050 Hz -> 8 kHz
    lead = np.zeros(int(RATE * rng.uniform(0.05, 0.2)), dtype=np.float32)
    return _noisy(np.concatenate([lead, wave * rng.uniform(0.5, 1.0) / (np.abs(wave).max() + 1e-6), lead]), rng)


def build(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    clips = _clips(Path(args.data) / "fsdd")
    speakers = sorted({s for s, _ in clips})
    if args.held_out not in speakers:
        raise SystemExit(f"--held-out {args.held_out}: not one of {', '.join(speakers)}")
    known = [s for s in speakers if s != args.held_out]
    rng = np.random.default_rng(args.seed)
    cache: dict = {}

    def strings(n: int, who: list[str], indices: range) -> list[tuple[np.ndarray, str]]:
        return [_string(clips, who[int(rng.integers(len(who)))], indices, rng, cache) for _ in range(n)]

    train = strings(args.train_strings, known, range(5, 50))
    if args.synthetic:
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        for _ in range(args.synthetic):
            digits = rng.integers(0, 10, size=int(rng.integers(2, 8)))
            text = " ".join(NAMES[d] for d in digits)
            train.append((_espeak(text, rng, folder / "tmp"), text))
    return {
        "train": _write(folder / "train", train),
        "valid": _write(folder / "valid", strings(args.valid_strings, known, range(5, 50))),
        "test_seen": _write(folder / "test_seen", strings(args.test_strings, known, range(0, 5))),
        "test_unseen": _write(folder / "test_unseen", strings(args.test_strings, [args.held_out], range(0, 50))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="runs/bench-digits-ctc")
    p.add_argument("--results", default="benchmarks/results/digits_ctc.json")
    p.add_argument("--held-out", default="jackson")
    p.add_argument("--train-strings", type=int, default=2000)
    p.add_argument("--valid-strings", type=int, default=200)
    p.add_argument("--test-strings", type=int, default=300)
    p.add_argument("--synthetic", type=int, default=0, help="extra training strings spoken by espeak-ng voices")
    p.add_argument("--cell", default="gru")
    p.add_argument("--hidden", type=int, default=160)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--stack", type=int, default=3)
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--normalise", default="utterance")
    p.add_argument("--speed-perturb", default="0.9,1.1")
    p.add_argument("--pitch-perturb", default="")
    p.add_argument("--freq-masks", type=int, default=2)
    p.add_argument("--time-masks", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-minutes", type=float, default=40.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    paths = build(args, out / "data")
    built = time.perf_counter() - started
    print(f"data built in {built:.0f} s", flush=True)
    cfg = RunConfig.create(
        "transcribe",
        model={"cell": args.cell, "hidden_size": args.hidden, "num_layers": args.layers,
               "bidirectional": args.bidirectional, "dropout": args.dropout if args.layers > 1 else 0.0,
               "output_dropout": args.dropout},
        data={},
        train={"epochs": args.epochs, "max_minutes": args.max_minutes, "batch_size": args.batch_size, "lr": args.lr,
               "clip": 5.0, "scheduler": "plateau", "lr_patience": 2, "early_stopping": 6, "seed": args.seed,
               "threads": args.threads, "log_every": 100},
        transcribe={"units": "word", "sample_rate": RATE, "n_mels": args.n_mels, "stack": args.stack,
                    "normalise": args.normalise, "speed_perturb": args.speed_perturb,
                    "pitch_perturb": args.pitch_perturb, "freq_masks": args.freq_masks,
                    "time_masks": args.time_masks})
    run = out / "run"
    result = training.train(cfg, paths["train"], run, valid_path=paths["valid"])
    figures = {}
    for name in ("test_seen", "test_unseen"):
        f = runner.evaluate(run, paths[name])
        figures[name] = {k: f[k] for k in ("wer", "cer", "loss", "count", "real_time_factor")}
        figures[name]["examples_wrong"] = f["errors"][:5]
        print(name, json.dumps(figures[name]), flush=True)
    report = {
        "benchmark": "connected digits (FSDD strings of 2-7 digits, CTC)",
        "held_out_speaker": args.held_out,
        **figures,
        "targets": {"test_seen_wer": TARGET_SEEN, "test_unseen_wer": TARGET_UNSEEN},
        "met": {"test_seen": figures["test_seen"]["wer"] <= TARGET_SEEN,
                "test_unseen": figures["test_unseen"]["wer"] <= TARGET_UNSEEN},
        "train_seconds": round(train_seconds(run), 1),
        "data_seconds": round(built, 1),
        "steps": result["steps"],
        "best_valid_error_rate": result.get("best_valid_error_rate"),
        "model": f"{'bi' if args.bidirectional else ''}{args.cell} {args.layers}x{args.hidden}, log-mel {args.n_mels} "
                 f"stacked x{args.stack}, normalise {args.normalise}, speed {args.speed_perturb or 'none'}, pitch "
                 f"{args.pitch_perturb or 'none'}, SpecAugment {args.freq_masks}F/{args.time_masks}T, "
                 f"{args.synthetic} synthetic strings",
        "command": "python benchmarks/digits_ctc.py " + " ".join(
            f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items() if k != "bidirectional")
            + ("" if args.bidirectional else " --no-bidirectional"),
        **environment(),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("test_seen", "test_unseen")}, indent=2))


if __name__ == "__main__":
    main()

"""Voice commands: a CTC transcriber on home-assistant commands spoken by synthetic voices it never heard.

The script builds its own data with Debian's espeak-ng: a few hundred commands ("turn off the kitchen
lights", "play some jazz", "set a timer for ten minutes", ...) from templates, each spoken by an English
voice of espeak-ng with a voice variant (timbre), at a random speed (130-210 words per minute) and pitch,
with white noise at 20-30 dB SNR, at 16 kHz. Voices are accent x variant; training hears six accents with
ten variants, the test speaks in two other accents with four other variants, so every test voice is new:

- train: `--train` utterances (random command, training voice, speed and pitch);
- valid: `--valid` more from the training voices (it picks the best epoch);
- test: `--test` utterances from the held-out voices.

Target: WER at most 0.05 on test. Word units; the report also gives the greedy and the beam search with the
command words as a lexicon, the training time and the real-time factor of decoding.

    python benchmarks/voice_commands.py --out runs/bench-voice --threads 1
    python benchmarks/voice_commands.py --out runs/bench-voice-stream --no-bidirectional --results \\
        benchmarks/results/voice_commands_streaming.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
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

RATE = 16000
TARGET = 0.05
TRAIN_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc"]
TEST_ACCENTS = ["en-029", "en-gb-x-gbcwmd"]
TRAIN_VARIANTS = ["", "+m1", "+m2", "+m4", "+m6", "+f1", "+f3", "+f5", "+klatt2", "+croak"]
TEST_VARIANTS = ["+m3", "+m7", "+f2", "+f4"]

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "fifteen", "twenty",
           "thirty", "forty five"]
ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "hallway", "garage", "office", "dining room"]
GENRES = ["jazz", "rock", "classical music", "the news", "some podcasts", "relaxing music", "pop music"]


def commands() -> list[str]:
    """The command set: every expansion of the templates, in a fixed order."""
    out = []
    for verb, room in itertools.product(["turn on", "turn off", "dim"], ROOMS):
        out.append(f"{verb} the {room} lights")
    for n in NUMBERS:
        out += [f"set a timer for {n} minutes", f"remind me in {n} minutes"]
    for genre in GENRES:
        out += [f"play {genre}", f"play {genre} in the {ROOMS[len(out) % len(ROOMS)]}"]
    for n in ["sixteen", "eighteen", "nineteen", "twenty", "twenty one", "twenty two", "twenty five"]:
        out.append(f"set the temperature to {n} degrees")
    for thing in ["front door", "back door", "garage door", "windows", "blinds", "curtains"]:
        out += [f"open the {thing}", f"close the {thing}", f"lock the {thing}"]
    for when in ["today", "tomorrow", "this weekend", "tonight"]:
        out += [f"what is the weather {when}", f"will it rain {when}"]
    out += ["stop the music", "pause", "resume", "volume up", "volume down", "mute", "next song", "previous song",
            "what time is it", "good morning", "good night", "call mom", "call the office", "cancel the timer",
            "how long is left on the timer", "turn on the fan", "turn off the fan", "turn off everything",
            "start the vacuum", "stop the vacuum", "add milk to the shopping list", "add eggs to the shopping list",
            "add bread to the shopping list", "read my messages", "what is on my calendar today"]
    return list(dict.fromkeys(out))


def speak(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    """`text` spoken by espeak-ng `voice` at `speed` words per minute and `pitch` (0-99) into a WAV file."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text], check=True)


def finish(path: Path, rng: np.random.Generator) -> np.ndarray:
    """An espeak-ng recording at 16 kHz, at a random level, with a pause either side and noise at 20-30 dB."""
    import soxr

    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = soxr.resample(wave.mean(axis=1), rate, RATE).astype(np.float32)
    wave = wave * rng.uniform(0.3, 0.9) / (np.abs(wave).max() + 1e-6)
    pad = np.zeros(int(RATE * rng.uniform(0.1, 0.4)), dtype=np.float32)
    wave = np.concatenate([pad, wave, pad[: len(pad) // 2]])
    power = float(np.mean(wave ** 2)) + 1e-12
    noise = rng.normal(0, np.sqrt(power / 10 ** (rng.uniform(20, 30) / 10)), wave.shape)
    return np.clip(wave + noise, -1, 1).astype(np.float32)


def build(folder: Path, n: int, accents: list[str], variants: list[str], rng: np.random.Generator) -> Path:
    """n utterances: a random command, voice (accent and variant), speed and pitch each; espeak-ng runs four
    at a time (it mostly waits on loading its data)."""
    from concurrent.futures import ThreadPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    texts = commands()
    plan = []
    for i in range(n):
        voice = accents[int(rng.integers(len(accents)))] + variants[int(rng.integers(len(variants)))]
        plan.append((texts[int(rng.integers(len(texts)))], voice, int(rng.integers(130, 211)),
                     int(rng.integers(25, 76)), folder / f"{i:05d}.wav"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: speak(*job), plan))
    with (folder / "manifest.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "text", "voice"])
        for text, voice, _, _, path in plan:
            sf.write(path, finish(path, rng), RATE)
            writer.writerow([path.name, text, voice])
    return folder / "manifest.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-voice")
    p.add_argument("--results", default="benchmarks/results/voice_commands.json")
    p.add_argument("--data-from", default=None, help="reuse the data folder of an earlier run")
    p.add_argument("--build-only", action="store_true", help="build the data and stop")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--valid", type=int, default=200)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--cell", default="gru")
    p.add_argument("--hidden", type=int, default=160)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--stack", type=int, default=3)
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--normalise", default=None, help="default: utterance (bidirectional), running (streaming)")
    p.add_argument("--speed-perturb", default="")
    p.add_argument("--freq-masks", type=int, default=2)
    p.add_argument("--time-masks", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-minutes", type=float, default=25.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    normalise = args.normalise or ("utterance" if args.bidirectional else "running")

    out = Path(args.out)
    started = time.perf_counter()
    if args.data_from:
        data = Path(args.data_from)
        if out.exists():
            shutil.rmtree(out)
    else:
        if out.exists():
            shutil.rmtree(out)
        data = out / "data"
        rng = np.random.default_rng(args.seed)
        build(data / "train", args.train, TRAIN_ACCENTS, TRAIN_VARIANTS, rng)
        build(data / "valid", args.valid, TRAIN_ACCENTS, TRAIN_VARIANTS, rng)
        build(data / "test", args.test, TEST_ACCENTS, TEST_VARIANTS, rng)
    built = time.perf_counter() - started
    print(f"data ready in {built:.0f} s", flush=True)
    if args.build_only:
        return
    cfg = RunConfig.create(
        "transcribe",
        model={"cell": args.cell, "hidden_size": args.hidden, "num_layers": args.layers,
               "bidirectional": args.bidirectional, "dropout": args.dropout if args.layers > 1 else 0.0,
               "output_dropout": args.dropout},
        train={"epochs": args.epochs, "max_minutes": args.max_minutes, "batch_size": args.batch_size, "lr": args.lr,
               "clip": 5.0, "scheduler": "plateau", "lr_patience": 2, "early_stopping": 6, "seed": args.seed,
               "threads": args.threads, "log_every": 100},
        transcribe={"units": "word", "sample_rate": RATE, "n_mels": args.n_mels, "stack": args.stack,
                    "normalise": normalise, "speed_perturb": args.speed_perturb, "freq_masks": args.freq_masks,
                    "time_masks": args.time_masks})
    run = out / "run"
    result = training.train(cfg, data / "train" / "manifest.csv", run, valid_path=data / "valid" / "manifest.csv")
    words = sorted({w for c in commands() for w in c.split()})
    (out / "lexicon.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    test = data / "test" / "manifest.csv"
    greedy = runner.evaluate(run, test)
    beam = runner.evaluate(run, test, beam=8, lexicon=str(out / "lexicon.txt"))
    keep = ("wer", "cer", "loss", "count", "real_time_factor")
    report = {
        "benchmark": "voice commands (espeak-ng voices never heard in training, CTC)",
        "commands": len(commands()),
        "test_greedy": {k: greedy[k] for k in keep} | {"examples_wrong": greedy["errors"][:8]},
        "test_beam8_lexicon": {k: beam[k] for k in keep},
        "target_wer": TARGET,
        "met": min(greedy["wer"], beam["wer"]) <= TARGET,
        "train_seconds": round(train_seconds(run), 1),
        "data_seconds": round(built, 1),
        "steps": result["steps"],
        "best_valid_error_rate": result.get("best_valid_error_rate"),
        "voices": {"train": [a + v for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS],
                   "test": [a + v for a in TEST_ACCENTS for v in TEST_VARIANTS]},
        "model": f"{'bi' if args.bidirectional else ''}{args.cell} {args.layers}x{args.hidden}, log-mel {args.n_mels} "
                 f"stacked x{args.stack}, normalise {normalise}, speed {args.speed_perturb or 'none'}, "
                 f"SpecAugment {args.freq_masks}F/{args.time_masks}T",
        "run": str(run),
        "command": "python benchmarks/voice_commands.py " + " ".join(
            f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items()
            if k not in ("bidirectional", "build_only") and v is not None)
        + ("" if args.bidirectional else " --no-bidirectional"),
        **environment(),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "voices"}, indent=2))


if __name__ == "__main__":
    main()

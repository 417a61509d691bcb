"""Serving speech: latency from the end of speech to the final transcript, over the service's audio stream.

Starts `rnnkit serve` on a unidirectional transcribe run and streams a 3-second voice command to
`/transcribe/stream` over a loopback WebSocket in 100 ms pieces of 16-bit PCM, as the microphone page does.
Each piece is sent once the answer to the previous one is back (the service keeps up with real time when
each answer takes under 100 ms), then `end`; the figure is the time from sending `end` to receiving the
final transcript, over `--repeats` commands. For comparison: the time to answer one 100 ms piece, and
the time to transcribe the whole file in one `POST /transcribe` after it ended (no streaming).

The run is `--run` (e.g. the streaming run of voice_commands.py); without it a run of the same shape is
trained for one step here (latency does not depend on the weights' values).

    python benchmarks/serve_speech.py --run runs/bench-voice-stream/run --out runs/bench-serve-speech
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from bench_common import environment
from serve import percentile, start_server

from rnnkit.config import RunConfig
from rnnkit.tasks import training

TARGET_P99_MS = 100.0


def command_wav(out: Path, rate: int, seconds: float = 3.0) -> Path:
    """A command of about `seconds` by espeak-ng, padded with silence to exactly that length."""
    import soxr

    raw = out / "espeak.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), "turn off the kitchen lights and set a timer for ten "
                    "minutes"], check=True)
    wave, r = sf.read(str(raw), dtype="float32")
    wave = soxr.resample(wave, r, rate)[: int(seconds * rate)]
    wave = np.concatenate([wave, np.zeros(int(seconds * rate) - len(wave), dtype=np.float32)])
    path = out / "command.wav"
    sf.write(path, wave * 0.8 / (np.abs(wave).max() + 1e-6), rate, subtype="PCM_16")
    return path


def tiny_run(out: Path, hidden: int, layers: int, stack: int, rate: int) -> Path:
    """A unidirectional run of the benchmark's shape, trained one step on a few synthetic commands."""
    rows = []
    for i, text in enumerate(["turn on the lights", "play some jazz", "set a timer for ten minutes"]):
        subprocess.run(["espeak-ng", "-w", str(out / f"c{i}.wav"), text], check=True)
        rows.append((f"c{i}.wav", text))
    with (out / "train.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "text"), *rows])
    cfg = RunConfig.create("transcribe", model={"cell": "gru", "hidden_size": hidden, "num_layers": layers,
                                                "bidirectional": False},
                           train={"max_steps": 1, "batch_size": 2, "log_every": 1000},
                           transcribe={"units": "char", "sample_rate": rate, "stack": stack})
    training.train(cfg, out / "train.csv", out / "run", valid_path=out / "train.csv", log=lambda s: None)
    return out / "run"


def main() -> None:
    from websockets.sync.client import connect

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="a unidirectional transcribe run (default: make one)")
    p.add_argument("--out", default="runs/bench-serve-speech")
    p.add_argument("--results", default="benchmarks/results/serve_speech.json")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--hidden", type=int, default=160)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--stack", type=int, default=3)
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else tiny_run(out, args.hidden, args.layers, args.stack, 16000)
    rate = json.loads((run / "config.json").read_text())["transcribe"]["sample_rate"]
    wav = command_wav(out, rate)
    wave, _ = sf.read(wav, dtype="int16")
    pcm = wave.astype("<i2").tobytes()
    step = 2 * rate * args.chunk_ms // 1000
    pieces = [pcm[i:i + step] for i in range(0, len(pcm), step)]

    proc, url = start_server(run, args.threads)
    try:
        info = httpx.get(url + "/info").json()
        ends, chunks, finals = [], [], []
        ws_url = url.replace("http", "ws") + f"/transcribe/stream?sample_rate={rate}"
        with connect(ws_url, max_size=None) as ws:
            for k in range(args.repeats + 3):  # the first three warm up
                for piece in pieces:
                    t0 = time.perf_counter()
                    ws.send(piece)
                    json.loads(ws.recv())
                    if k >= 3:
                        chunks.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ws.send("end")
                final = json.loads(ws.recv())["final"]
                if k >= 3:
                    ends.append(time.perf_counter() - t0)
                    finals.append(final)
        body = wav.read_bytes()
        whole = []
        for k in range(min(args.repeats, 50) + 3):
            t0 = time.perf_counter()
            r = httpx.post(url + "/transcribe", content=body, timeout=60)
            r.raise_for_status()
            if k >= 3:
                whole.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def ms(values: list[float]) -> dict[str, float]:
        return {"p50": round(1000 * percentile(values, 50), 2), "p99": round(1000 * percentile(values, 99), 2),
                "max": round(1000 * max(values), 2), "count": len(values)}

    report = {
        "benchmark": "end of speech to final transcript over /transcribe/stream (3-second command)",
        "run": str(run),
        "model": f"{info['cell']} {info['num_layers']}x{info['hidden_size']}, {info['units']} units, "
                 f"{info['parameters']:,} parameters, {rate} Hz",
        "audio_seconds": len(wave) / rate,
        "chunk_ms": args.chunk_ms,
        "end_to_final_ms": ms(ends),
        "chunk_answer_ms": ms(chunks),
        "whole_file_post_ms": ms(whole),
        "target_p99_ms": TARGET_P99_MS,
        "met": percentile(ends, 99) * 1000 <= TARGET_P99_MS,
        "final_transcript": finals[-1],
        "server_threads": args.threads,
        "command": "python benchmarks/serve_speech.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        **environment(),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Serving: keystroke latency of autocomplete with and without typing sessions, and load from many clients.

Starts `rnnkit serve` on a character LSTM (2x256 by default, trained here for a few minutes on Tiny
Shakespeare unless --run names a run) and talks to it over loopback HTTP from this process:

1. keystroke latency: a client types a text one character at a time and asks for 5 completions after
   each; latencies are grouped by prefix length (up to 1,000 characters), with a session (one model
   step per keystroke) and without (the server re-reads the whole prefix every time);
2. load: 32 clients type at once, each with its own session, for a fixed time; requests per second,
   p50/p99 latency and the number of errors; once with the steps of concurrent requests batched (the
   server's default) and once without (--no-batch-steps), each on a fresh server.

    python benchmarks/serve.py --data ../shared/data --out runs/bench-serve
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from rnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnkit.tasks.training import train

LENGTH_BINS = (10, 100, 250, 500, 1000)


def percentile(values: list[float], q: float) -> float:
    """The measured value nearest the q-th percentile (no interpolation); NaN when there is none."""
    return float(np.percentile(values, q, method="nearest")) if values else float("nan")


def train_model(data: Path, out: Path, minutes: float, hidden: int, layers: int) -> Path:
    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(text[: int(len(text) * 0.9)], encoding="utf-8")
    run = out / "run"
    if (run / "model.safetensors").exists():
        return run
    cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=64, hidden_size=hidden, num_layers=layers),
                    data=DataConfig(tokenizer="char"),
                    train=TrainConfig(epochs=100, max_minutes=minutes, batch_size=32, bptt=100, lr=2e-3,
                                      log_every=200, eval_every=200))
    train(cfg, out / "train.txt", run)
    return run


def start_server(run: Path, threads: int, batch_steps: bool = True) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rnnkit", "serve", str(run), "--port", str(port),
                             "--threads", str(threads), "--batch-steps" if batch_steps else "--no-batch-steps"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def keystrokes(url: str, text: str, use_session: bool, every: int = 1) -> dict[int, list[float]]:
    """Type `text` a character at a time; latency (ms) of each completion request by prefix length bin.

    With `every` > 1 only every so many keystrokes is sent (the others are not typed at all): without a
    session the server re-reads the whole prefix per request, so sampling keeps that run short.
    """
    by_bin: dict[int, list[float]] = {b: [] for b in LENGTH_BINS}
    session = None
    with httpx.Client(timeout=60) as client:
        for end in range(1, len(text) + 1, every):
            body = {"prefix": text[:end], "n": 5}
            if use_session and session:
                body["session"] = session
            t0 = time.perf_counter()
            r = client.post(url + "/complete", json=body)
            ms = (time.perf_counter() - t0) * 1000
            r.raise_for_status()
            session = r.json()["session"]
            # Bins: lengths 1-10, 11-100, 101-250, 251-500, 501-1000, each named by its upper bound.
            by_bin[next(b for b in LENGTH_BINS if end <= b or b == LENGTH_BINS[-1])].append(ms)
    return by_bin


def load_test(url: str, texts: list[str], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        nonlocal errors
        text = texts[k % len(texts)]
        session, end = None, 1
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < stop:
                body = {"prefix": text[:end], "n": 5}
                if session:
                    body["session"] = session
                t0 = time.perf_counter()
                try:
                    r = client.post(url + "/complete", json=body)
                    ok = r.status_code == 200
                    if ok:
                        session = r.json()["session"]
                except httpx.HTTPError:
                    ok = False
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(ms)
                    errors += not ok
                end = end + 1 if end < len(text) else 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/bench-serve")
    ap.add_argument("--run", default=None, help="a character language-model run to serve (default: train one)")
    ap.add_argument("--train-minutes", type=float, default=4.0)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per request in the server")
    ap.add_argument("--no-session-every", type=int, default=5,
                    help="without sessions, time every N-th keystroke only (default: 5)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-compare", action="store_true",
                    help="skip the load test of a server without step batching")
    ap.add_argument("--result", default="benchmarks/results/serve.json")
    args = ap.parse_args()

    torch.set_num_threads(2)
    load_average = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews every figure
    run = Path(args.run) if args.run else train_model(Path(args.data), Path(args.out), args.train_minutes,
                                                       args.hidden, args.layers)
    text = (Path(args.data) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    valid = text[int(len(text) * 0.9):]
    typed = valid[1000:2000]
    proc, url = start_server(run, args.threads)
    try:
        info = httpx.get(url + "/info").json()
        print(f"serving {info['cell']} {info['num_layers']}x{info['hidden_size']} ({info['parameters']:,} parameters) "
              f"at {url}", flush=True)
        keystrokes(url, typed[:50], True)  # warm-up
        rows = []
        with_s = keystrokes(url, typed, True)
        without = keystrokes(url, typed, False, every=args.no_session_every)
        for b in LENGTH_BINS:
            row = {"prefix_chars": b,
                   "session_p50_ms": round(percentile(with_s[b], 50), 2),
                   "session_p99_ms": round(percentile(with_s[b], 99), 2),
                   "no_session_p50_ms": round(percentile(without[b], 50), 2),
                   "no_session_p99_ms": round(percentile(without[b], 99), 2),
                   "keystrokes": len(with_s[b])}
            rows.append(row)
            print(json.dumps(row), flush=True)
        texts = [valid[k * 3000: k * 3000 + 1000] for k in range(args.clients)]
        before = httpx.get(url + "/info").json()["batching"]
        load = load_test(url, texts, args.clients, args.seconds)
        after = httpx.get(url + "/info").json()["batching"]
        # The batched steps of the load test alone, and the mean number of requests' steps in one.
        batches, calls = after["batches"] - before["batches"], after["calls"] - before["calls"]
        load["batched_steps"] = {"batches": batches, "calls": calls, "calls_per_batch": round(calls / batches, 2)}
        print(json.dumps(load), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    unbatched = None
    if not args.no_compare:
        proc, url = start_server(run, args.threads, batch_steps=False)
        try:
            keystrokes(url, typed[:50], True)  # warm-up
            unbatched = load_test(url, texts, args.clients, args.seconds)
            print(json.dumps({"no_batch_steps": unbatched}), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        "benchmark": "serve", "run": str(run), "model": f"{info['cell']} {info['num_layers']}x{info['hidden_size']}",
        "date": datetime.date.today().isoformat(),
        "keystrokes": rows, "load": load, "load_without_step_batching": unbatched,
        "all_session_p99_ms": round(max(r["session_p99_ms"] for r in rows), 2),
        "target_p99_ms": 20.0,
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "torch": torch.__version__,
                    "server_threads": args.threads, "load_average_at_start": load_average},
        "median_of": "per-keystroke latencies; p50/p99 are the 50th/99th percentiles",
        "mean_session_ms": round(statistics.mean(x for b in with_s.values() for x in b), 2),
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.result}")


if __name__ == "__main__":
    main()

"""Serving recommendations: per-event latency of `POST /recommend/session` with the Games catalogue.

Starts `rnnkit serve` on a recommend run (the Games run of benchmarks/games.py by default, 23,715 items) and
replays real histories from Video.txt over loopback HTTP, one event per request:

1. one client: each history event by event through a session (the server steps the recurrent state once
   per event and scores the whole catalogue), against `POST /recommend` with the whole history re-read
   every time; p50 / p99 per event;
2. load: several clients at once, each replaying its own histories through its own session, for a fixed
   time; requests per second, p50 / p99 and errors.

    python benchmarks/serve_recommend.py --data ../shared/data --run runs/bench-games

Writes benchmarks/results/serve_recommend.json.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import httpx
from bench_common import cpu_name
from serve import percentile, start_server

TARGET_P99_MS = 20.0


def replay(url: str, histories: list[list[str]], use_session: bool, top_k: int = 10) -> list[float]:
    """Send every history event by event; the latency (ms) of each request."""
    latencies = []
    with httpx.Client(timeout=60) as client:
        for history in histories:
            session = None
            for end in range(1, len(history) + 1):
                if use_session:
                    body = {"events": [history[end - 1]], "top_k": top_k}
                    if session:
                        body["session"] = session
                    path = "/recommend/session"
                else:
                    body, path = {"history": history[:end], "top_k": top_k}, "/recommend"
                t0 = time.perf_counter()
                r = client.post(url + path, json=body)
                latencies.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                session = r.json().get("session")
            if session:
                client.delete(f"{url}/recommend/sessions/{session}")
    return latencies


def load_test(url: str, histories: list[list[str]], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        nonlocal errors
        mine = histories[k::clients]
        with httpx.Client(timeout=60) as client:
            n = 0
            while time.monotonic() < stop:
                history = mine[n % len(mine)]
                n += 1
                session = None
                for item in history:
                    if time.monotonic() >= stop:
                        break
                    body = {"events": [item], **({"session": session} if session else {})}
                    t0 = time.perf_counter()
                    try:
                        r = client.post(url + "/recommend/session", json=body)
                        ok = r.status_code == 200
                        session = r.json()["session"] if ok else None
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        errors += not ok

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--run", default="runs/bench-games", help="a recommend run (benchmarks/games.py writes one)")
    ap.add_argument("--users", type=int, default=300, help="histories replayed by the single client")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per request in the server")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--note", default="", help="recorded with the result (e.g. how the run was trained)")
    ap.add_argument("--result", default=str(Path(__file__).resolve().parent / "results" / "serve_recommend.json"))
    args = ap.parse_args()
    load_average = [round(x, 2) for x in os.getloadavg()]
    groups: dict[str, list[str]] = {}
    for line in (Path(args.data) / "sasrec_games" / "Video.txt").read_text().splitlines():
        user, item = line.split()[:2]
        groups.setdefault(user, []).append(item)
    # Users spread over the file, their latest 50 events (as the model reads them).
    every = max(1, len(groups) // args.users)
    histories = [h[-50:] for h in list(groups.values())[::every][: args.users]]
    proc, url = start_server(Path(args.run), args.threads)
    try:
        info = httpx.get(url + "/info").json()
        print(f"serving {info['cell']} {info['num_layers']}x{info['hidden_size']}, {info['items']:,} items at {url}",
              flush=True)
        replay(url, histories[:10], True)  # warm-up
        with_session = replay(url, histories, True)
        without = replay(url, histories[: max(1, args.users // 3)], False)
        single = {"events": len(with_session),
                  "session_p50_ms": round(percentile(with_session, 50), 2),
                  "session_p99_ms": round(percentile(with_session, 99), 2),
                  "reread_p50_ms": round(percentile(without, 50), 2),
                  "reread_p99_ms": round(percentile(without, 99), 2)}
        print(json.dumps(single), flush=True)
        load = load_test(url, histories, args.clients, args.seconds)
        print(json.dumps(load), flush=True)
    finally:
        proc.kill()
    result = {"benchmark": "serve_recommend", "run": str(args.run), "items": info["items"],
              "model": f"{info['cell']} {info['num_layers']}x{info['hidden_size']}", "single_client": single,
              "load": load, "target_p99_ms": TARGET_P99_MS, "target_met": single["session_p99_ms"] < TARGET_P99_MS,
              "server_threads": args.threads, "cpu": cpu_name(), "load_average_before": load_average,
              "note": args.note}
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.result}")


if __name__ == "__main__":
    main()

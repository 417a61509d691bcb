"""Vanishing gradients, measured: a vanilla RNN against an LSTM trained on the same text.

Trains a character-level vanilla RNN (tanh) and an LSTM of the same size on Tiny Shakespeare for the same
time, then runs `rnnkit inspect`'s gradient-flow measurement on both: the norm of the gradient of the loss at
the last step with respect to the state k steps earlier, averaged over sequences of the validation text. Writes
one plot with both curves and a JSON of the figures.

    python benchmarks/gradient_flow.py --data ../shared/data --minutes 4 --out runs/bench-gradient-flow
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rnnkit import viz
from rnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnkit.diagnostics import inspect_lm
from rnnkit.tasks.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/bench-gradient-flow")
    ap.add_argument("--minutes", type=float, default=4.0, help="training time for each model")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100, help="steps to backpropagate through when measuring")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--plot", default="docs/gradient_flow.png")
    ap.add_argument("--result", default="benchmarks/results/gradient_flow.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    text = (Path(args.data) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(text[:cut], encoding="utf-8")
    (out / "valid.txt").write_text(text[cut:], encoding="utf-8")

    curves, figures = {}, {}
    for cell in ("rnn", "lstm"):
        run = out / cell
        if not (run / "model.safetensors").exists():
            cfg = RunConfig(task="lm", model=ModelConfig(cell=cell, embedding_size=32, hidden_size=args.hidden,
                                                         num_layers=1),
                            data=DataConfig(tokenizer="char"),
                            train=TrainConfig(epochs=100, max_minutes=args.minutes, batch_size=32, bptt=100,
                                              lr=2e-3, clip=1.0, eval_every=200, log_every=200, seed=0,
                                              threads=args.threads))
            t0 = time.monotonic()
            result = train(cfg, out / "train.txt", run, valid_path=out / "valid.txt")
            print(f"{cell}: trained {time.monotonic() - t0:.0f} s, best valid loss {result['best_valid_loss']:.4f}")
        found = inspect_lm(run, out / "valid.txt", out / f"inspect-{cell}", steps=args.steps, rows=32)
        by_distance = found["gradient_norm_by_distance"]
        distances = sorted(int(d) for d in by_distance)
        last = by_distance[0] if 0 in by_distance else by_distance["0"]
        norms = [by_distance[d] / last for d in distances]  # relative to the last step's own gradient
        label = {"rnn": "vanilla RNN (tanh)", "lstm": "LSTM"}[cell]
        curves[label] = (distances, norms)
        figures[cell] = {"decay_per_step": found["decay_per_step"], "clip_fraction": found["clip_fraction"],
                         "relative_norm_at": {str(d): norms[d] for d in (10, 25, 50, args.steps - 1) if d < len(norms)}}
        print(cell, json.dumps(figures[cell]))
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    viz.plot_gradient_flow(curves, args.plot, title=f"Gradient at the state k steps back / at k = 0 "
                                                    f"(char models, 1x{args.hidden})")
    Path(args.result).write_text(json.dumps({"benchmark": "gradient_flow", "minutes_each": args.minutes,
                                             "hidden": args.hidden, "steps": args.steps, **figures}, indent=2) + "\n",
                                 encoding="utf-8")
    print(f"wrote {args.plot} and {args.result}")


if __name__ == "__main__":
    main()

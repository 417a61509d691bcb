"""What the state does over a passage: a vanilla RNN against an LSTM trained on the same text.

Reads the two character models `benchmarks/gradient_flow.py` trains (RUNS/rnn and RUNS/lstm), runs each over the
same passage of the validation text one character at a time, and draws the top layer's hidden state as two
heatmaps (units by characters) in one figure; writes a JSON of simple figures of the states: the share of
saturated values (|h| > 0.95) and how much a unit moves from one character to the next.

    python benchmarks/activations.py --runs runs/bench-gradient-flow
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rnnkit import viz
from rnnkit.diagnostics import hidden_activations
from rnnkit.tasks import runner

LABELS = {"rnn": "vanilla RNN (tanh)", "lstm": "LSTM"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/bench-gradient-flow", help="the folder gradient_flow.py trained into")
    ap.add_argument("--text", default=None, help="text to read (default: RUNS/valid.txt)")
    ap.add_argument("--start", default="PETRUCHIO:\nAnd you", help="the passage starts at the first occurrence of this")
    ap.add_argument("--length", type=int, default=100, help="characters read")
    ap.add_argument("--units", type=int, default=48, help="units drawn (the first ones)")
    ap.add_argument("--plot", default="docs/activations.png")
    ap.add_argument("--result", default="benchmarks/results/activations.json")
    args = ap.parse_args()

    runs = Path(args.runs)
    text = Path(args.text or runs / "valid.txt").read_text(encoding="utf-8")
    at = text.find(args.start)
    if at < 0:
        raise SystemExit(f"{args.start!r} is not in the text")
    passage = text[at:at + args.length]
    panels, figures = {}, {}
    for cell in ("rnn", "lstm"):
        loaded = runner.load(runs / cell)
        ids = torch.tensor(loaded.tokenizer.encode(passage), dtype=torch.long)
        acts = hidden_activations(loaded.model, ids)  # (T, H)
        panels[LABELS[cell]] = acts
        figures[cell] = {
            "saturated_fraction": float((acts.abs() > 0.95).float().mean()),
            "mean_abs_change_per_step": float((acts[1:] - acts[:-1]).abs().mean()),
            "mean_abs_value": float(acts.abs().mean()),
        }
        print(cell, json.dumps(figures[cell]))
    viz.plot_activation_panels(panels, list(passage), args.plot, max_units=args.units)
    Path(args.result).write_text(json.dumps({"benchmark": "activations", "runs": str(runs), "passage": passage,
                                             **figures}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.plot} and {args.result}")


if __name__ == "__main__":
    main()

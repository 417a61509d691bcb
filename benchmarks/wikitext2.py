"""WikiText-2, word level: test perplexity of a word LSTM within a time budget, and the training loop's
overhead against the same model written as a plain PyTorch loop over `nn.LSTM`.

The corpus is already tokenised: rnnkit's `space` tokenizer keeps its tokens (one per space-separated
word, one end-of-line per line, `<unk>` as in the files), so perplexities compare with published ones.

    python benchmarks/wikitext2.py perplexity --data ../shared/data --minutes 60 --out runs/bench-wt2
    python benchmarks/wikitext2.py overhead --data ../shared/data --steps 60 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import environment
from torch import nn

from rnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnkit.data import build_tokenizer, read_text
from rnnkit.models.language_model import LanguageModel
from rnnkit.tasks.lm import StreamSource
from rnnkit.tasks.training import train
from rnnkit.train import Trainer, seed_everything


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(cell="lstm", embedding_size=args.embed, hidden_size=args.hidden, num_layers=args.layers,
                       dropout=args.dropout, embedding_dropout=args.dropout, output_dropout=args.dropout,
                       adaptive_softmax=args.adaptive_softmax)


def run_perplexity(args: argparse.Namespace) -> dict:
    wt2 = Path(args.data) / "wikitext2"
    out = Path(args.out)
    if (out / "run").exists():
        raise SystemExit(f"{out / 'run'} exists: choose another --out")
    cfg = RunConfig(
        task="lm",
        model=model_config(args),
        data=DataConfig(tokenizer="space"),
        train=TrainConfig(epochs=100, max_minutes=args.minutes, max_steps=args.max_steps, batch_size=args.batch_size,
                          bptt=args.bptt, lr=args.lr, clip=0.25 if args.optimizer == "sgd" else 1.0,
                          optimizer=args.optimizer, scheduler=args.scheduler,
                          lr_factor=0.25 if args.optimizer == "sgd" else 0.5,
                          eval_every=args.eval_every, seed=args.seed, log_every=100, checkpoint_minutes=15),
    )
    start = time.monotonic()
    result = train(cfg, wt2 / "train.txt", out / "run", valid_path=wt2 / "valid.txt", test_path=wt2 / "test.txt")
    summary = {
        "benchmark": "wikitext2-word",
        "test_perplexity": round(result["test"]["perplexity"], 2),
        "test_tokens": int(result["test"]["tokens"]),
        "best_valid_loss": round(result["best_valid_loss"], 4),
        "target": 130,
        "steps": result["steps"],
        "train_minutes": args.minutes,
        "wall_seconds": round(time.monotonic() - start, 1),
        "model": f"lstm {args.layers}x{args.hidden}, embed {args.embed}, dropout {args.dropout}, "
                 f"adaptive softmax {args.adaptive_softmax}, {args.optimizer} lr {args.lr}, {args.scheduler} schedule"
                 + (f" over {args.max_steps} steps" if args.max_steps else ""),
        **environment(),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class PlainLM(nn.Module):
    """The same network written the plain PyTorch way: nn.Embedding -> nn.LSTM -> output layer."""

    def __init__(self, vocab: int, args: argparse.Namespace, cutoffs: tuple[int, ...] | None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, args.embed)
        self.drop = nn.Dropout(args.dropout)
        self.rnn = nn.LSTM(args.embed, args.hidden, args.layers, batch_first=True, dropout=args.dropout)
        self.cutoffs = cutoffs
        if cutoffs:
            self.decoder = nn.AdaptiveLogSoftmaxWithLoss(args.hidden, vocab, list(cutoffs), div_value=4.0)
        else:
            self.decoder = nn.Linear(args.hidden, vocab)

    def forward(self, x, y, hidden):
        out, hidden = self.rnn(self.drop(self.embedding(x)), hidden)
        out = self.drop(out).reshape(-1, out.shape[-1])
        if self.cutoffs:
            return self.decoder(out, y.reshape(-1)).loss, hidden
        return nn.functional.cross_entropy(self.decoder(out), y.reshape(-1)), hidden


def plain_loop(model: PlainLM, data: torch.Tensor, bptt: int, steps: int, lr: float, clip: float) -> None:
    """A textbook truncated-BPTT loop: slice, forward, backward, clip, step, detach."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # as the Trainer builds it
    hidden = None
    model.train()
    for i in range(steps):
        x = data[:, i * bptt : (i + 1) * bptt]
        y = data[:, i * bptt + 1 : (i + 1) * bptt + 1]
        loss, hidden = model(x, y, hidden)
        hidden = tuple(h.detach() for h in hidden)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def run_overhead(args: argparse.Namespace) -> dict:
    """Tokens/s of rnnkit's Trainer and of the plain loop, alternated, by differential timing.

    Each side is timed for `steps` and for 2*`steps` optimizer steps from the same start; the difference
    is the time of `steps` steady-state steps, free of setup, evaluation and checkpoint costs.
    """
    text = read_text(Path(args.data) / "wikitext2" / "train.txt")
    tok = build_tokenizer("space", text)
    ids = torch.tensor(tok.encode(text))
    cutoffs = ModelConfig(adaptive_softmax=args.adaptive_softmax).cutoffs()
    source = StreamSource(ids, args.batch_size, args.bptt)
    data = source.stream.data
    tokens_per_step = args.batch_size * args.bptt

    def rnnkit_time(steps: int) -> float:
        seed_everything(0)
        model = LanguageModel(tok.vocab_size, args.embed, args.hidden, args.layers, "lstm", args.dropout, args.dropout,
                              args.dropout, adaptive_softmax=cutoffs)
        cfg = TrainConfig(epochs=1, max_steps=steps, batch_size=args.batch_size, bptt=args.bptt, lr=args.lr,
                          clip=1.0, scheduler="constant", log_every=10**9, checkpoint_minutes=10**6)
        with tempfile.TemporaryDirectory() as d:
            trainer = Trainer(model, source, None, cfg, d, log=lambda line: None)
            trainer._validate = lambda loss: False  # time the loop, not the closing evaluation
            trainer._checkpoint_now = lambda: None
            trainer.plot_curves = lambda: None
            start = time.perf_counter()
            trainer.fit()
            return time.perf_counter() - start

    def plain_time(steps: int) -> float:
        seed_everything(0)
        model = PlainLM(tok.vocab_size, args, cutoffs)
        start = time.perf_counter()
        plain_loop(model, data, args.bptt, steps, args.lr, 1.0)
        return time.perf_counter() - start

    rates: dict[str, list[float]] = {"rnnkit": [], "plain": []}
    for _ in range(args.repeats):
        for name, fn in (("rnnkit", rnnkit_time), ("plain", plain_time)):
            t1, t2 = fn(args.steps), fn(2 * args.steps)
            rates[name].append(args.steps * tokens_per_step / (t2 - t1))
    med = {k: statistics.median(v) for k, v in rates.items()}
    summary = {
        "benchmark": "wikitext2-training-loop-overhead",
        "tokens_per_s": {k: {"median": round(med[k]), "min": round(min(v)), "max": round(max(v))}
                         for k, v in rates.items()},
        "overhead_percent": round(100 * (med["plain"] / med["rnnkit"] - 1), 2),
        "target_percent": 5,
        "steps": args.steps,
        "repeats": args.repeats,
        "model": f"lstm {args.layers}x{args.hidden}, embed {args.embed}, adaptive softmax {args.adaptive_softmax}, "
                 f"batch {args.batch_size}, bptt {args.bptt}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["perplexity", "overhead"])
    ap.add_argument("--data", default="../shared/data", help="folder holding wikitext2/{train,valid,test}.txt")
    ap.add_argument("--out", default="runs/bench-wt2")
    ap.add_argument("--minutes", type=float, default=60.0, help="perplexity: training time budget")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--adaptive-softmax", default="2000,10000")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--scheduler", choices=["plateau", "cosine", "constant"], default="cosine",
                    help="perplexity: learning-rate schedule (cosine decays to zero over --max-steps)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="perplexity: step budget (set it to what fits in --minutes, so cosine ends at zero)")
    ap.add_argument("--eval-every", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=60, help="overhead: steps per timing")
    ap.add_argument("--repeats", type=int, default=5, help="overhead: alternated repeats")
    args = ap.parse_args()
    summary = run_perplexity(args) if args.mode == "perplexity" else run_overhead(args)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""English to German on Tatoeba: test BLEU and chrF of an attentional GRU encoder-decoder, greedy and beam 5.

Data: the first two columns of tatoeba_deu_eng/deu.txt (English, German), pairs of up to --max-words
whitespace-separated words on both sides, split 90/5/5 into train/valid/test by a random permutation
seeded with --split-seed (the split is written to the output folder). Word vocabularies keep words seen
--min-freq times; rarer words are <unk>, which the decoder's output copies from the source. Prints and
writes a JSON summary (benchmarks/results/tatoeba.json by default), including the seed's example
sentence "My name is John." translated.

    python benchmarks/tatoeba.py --data ../shared/data --out runs/bench-tatoeba --minutes 100 --max-steps 22000 \
        --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from bench_common import environment

from rnnkit.config import DataConfig, ModelConfig, RunConfig, Seq2SeqConfig, TrainConfig
from rnnkit.tasks import runner, seq2seq, training

EXAMPLES = ["My name is John.", "I love you.", "Where is the train station?", "Tom doesn't like cheese.",
            "We will meet tomorrow at the airport."]


def split_pairs(path: Path, max_words: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) < 2:
            continue
        en, de = cols[0].strip(), cols[1].strip()
        if en and de and len(en.split()) <= max_words and len(de.split()) <= max_words:
            pairs.append((en, de))
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = n_valid = round(0.05 * len(pairs))
    test = [pairs[i] for i in order[:n_test]]
    valid = [pairs[i] for i in order[n_test:n_test + n_valid]]
    train = [pairs[i] for i in order[n_test + n_valid:]]
    return {"train": train, "valid": valid, "test": test}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding tatoeba_deu_eng/deu.txt")
    ap.add_argument("--out", default="runs/bench-tatoeba")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "tatoeba.json"))
    ap.add_argument("--minutes", type=float, default=70.0, help="training time budget")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--max-words", type=int, default=10)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--cell", default="gru")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--attention", default="additive")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--adaptive-softmax", default="2000,6000", help="output layer cutoffs; 'none' for a full softmax")
    ap.add_argument("--min-freq", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--scheduler", choices=["plateau", "cosine", "constant"], default="cosine",
                    help="learning-rate schedule (cosine decays to zero over --max-steps)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="step budget (set it to what fits in --minutes, so cosine ends at zero)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score-only", action="store_true",
                    help="score the run already in --out again (after a change to decoding), without training")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    run = out / "run"
    if args.score_only:
        previous = json.loads((out / "result.json").read_text(encoding="utf-8"))
        figures, examples = score(runner.load(run), out, args.beam)
        summary = {**previous, "test": figures, "examples": examples}
        text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
        (out / "result.json").write_text(text, encoding="utf-8")
        Path(args.results).write_text(text, encoding="utf-8")
        print(text)
        return
    if run.exists():
        raise SystemExit(f"{run} exists: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    split = split_pairs(Path(args.data) / "tatoeba_deu_eng" / "deu.txt", args.max_words, args.split_seed)
    for name, pairs in split.items():
        (out / f"{name}.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs), encoding="utf-8")
    print({k: len(v) for k, v in split.items()}, flush=True)

    cfg = RunConfig(
        task="seq2seq",
        model=ModelConfig(cell=args.cell, embedding_size=args.embed, hidden_size=args.hidden, num_layers=args.layers,
                          bidirectional=True, dropout=args.dropout, embedding_dropout=args.dropout,
                          output_dropout=args.dropout,
                          adaptive_softmax=None if args.adaptive_softmax == "none" else args.adaptive_softmax),
        data=DataConfig(tokenizer="word", min_freq=args.min_freq),
        train=TrainConfig(epochs=args.epochs, max_minutes=args.minutes, max_steps=args.max_steps,
                          batch_size=args.batch_size, bptt=0, lr=args.lr, clip=1.0, scheduler=args.scheduler,
                          lr_patience=0, lr_factor=0.5,
                          seed=args.seed, threads=args.threads, log_every=200, checkpoint_minutes=15),
        options=Seq2SeqConfig(source_tokenizer="word", target_tokenizer="word", attention=args.attention,
                              max_length=args.max_words + 10),
    )
    start = time.monotonic()
    result = training.train(cfg, out / "train.tsv", run, valid_path=out / "valid.tsv")
    train_wall = time.monotonic() - start

    figures, examples = score(runner.load(run), out, args.beam)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    meta = json.loads((run / "config.json").read_text())
    summary = {
        "benchmark": "tatoeba-eng-deu",
        "split": f"pairs of <= {args.max_words} words on both sides, random 90/5/5 (seed {args.split_seed})",
        "pairs": {k: len(v) for k, v in split.items()},
        "test": figures,
        "target_bleu": 35.0,
        "examples": examples,
        "epochs_done": round(records[-1]["epoch"], 2) if records else 0,
        "best_valid_loss": round(result["best_valid_loss"], 4),
        "steps": result["steps"],
        "pairs_dropped": result["pairs_dropped"],
        "train_minutes_budget": args.minutes,
        "train_wall_seconds": round(train_wall, 1),
        "model": f"{args.cell} {args.layers}x{args.hidden} bidirectional encoder, {args.attention} attention, "
                 f"embed {args.embed}, dropout {args.dropout}, word vocabularies (min freq {args.min_freq}), "
                 f"adaptive softmax {args.adaptive_softmax}, batch {args.batch_size}, lr {args.lr}, {args.scheduler} "
                 f"schedule" + (f" over {args.max_steps} steps" if args.max_steps else ""),
        "vocab": {"source": meta["source_vocab_size"], "target": meta["target_vocab_size"]},
        **environment(),
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    (out / "result.json").write_text(text, encoding="utf-8")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text, encoding="utf-8")
    print(text)


def score(loaded: seq2seq.LoadedSeq2Seq, out: Path, beam_size: int) -> tuple[dict, dict]:
    """Test figures (greedy and beam), the example translations, and the attention plot of the first one."""
    figures = {}
    for name, beam in (("greedy", 1), (f"beam{beam_size}", beam_size)):
        t0 = time.monotonic()
        f = seq2seq.TASK.evaluate(loaded, out / "test.tsv", beam=beam)
        figures[name] = {k: round(v, 4) for k, v in f.items()} | {"decode_seconds": round(time.monotonic() - t0, 1)}
        print(name, figures[name], flush=True)
    examples: dict[str, dict[str, str]] = {}
    for beam in (1, beam_size):
        for src, t in zip(EXAMPLES, seq2seq.translate(loaded, EXAMPLES, beam=beam), strict=True):
            examples.setdefault(src, {})["greedy" if beam == 1 else f"beam{beam_size}"] = t.text
    pick = seq2seq.translate(loaded, [EXAMPLES[0]], beam=beam_size, attention=True)[0]
    seq2seq.plot_attention(pick, out / "attention-my-name-is-john.png", title=f"{EXAMPLES[0]} -> {pick.text}")
    return figures, examples


if __name__ == "__main__":
    main()

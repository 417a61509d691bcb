"""Where does attention look? Each attention kind trained briefly on Tatoeba English->German, then measured.

For every kind in --kinds, the same model as benchmarks/tatoeba.py (GRU, bidirectional encoder, word
vocabularies, adaptive softmax) is trained for --minutes on the first --pairs pairs of the benchmark's
training split and then run teacher-forced over the first --probe validation pairs. Reported per kind:

- `valid_loss`: the best validation loss reached in the time (first 2,000 validation pairs);
- `mean_max_weight`: the largest attention weight of a decoder step, averaged (1.0: one position takes all);
- `closing_eos_mass`: the weight on the source's closing `<eos>`, averaged over steps;
- `position_correlation`: per pair, the correlation between a step's expected source position (weights times
  positions) and the step's own position, averaged over pairs: near 1 when attention moves along the source
  as the translation proceeds, as it should for English->German, near 0 or below when it stays put.

    python benchmarks/tatoeba_attention.py --data ../shared/data --out runs/bench-tatoeba-attention --minutes 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_common import environment
from tatoeba import split_pairs

from rnnkit.config import DataConfig, ModelConfig, RunConfig, Seq2SeqConfig, TrainConfig
from rnnkit.data.tokenizers import BOS_ID
from rnnkit.tasks import runner, seq2seq, training


def attention_statistics(loaded: seq2seq.LoadedSeq2Seq, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Teacher-forced attention weights over `pairs`, summarised as the module docstring says."""
    model = loaded.model
    max_w, eos_mass, correlations = [], [], []
    with torch.no_grad():
        for source, target in pairs:
            ids = seq2seq._source_ids(loaded.source_tokenizer, source)
            target_ids = loaded.target_tokenizer.encode(target)
            _, weights = model(torch.tensor([ids]), torch.tensor([len(ids)]), torch.tensor([[BOS_ID, *target_ids]]))
            w = weights[0].double()  # (T, S)
            max_w.append(float(w.max(dim=1).values.mean()))
            eos_mass.append(float(w[:, -1].mean()))
            T, S = w.shape
            if T > 2 and S > 2:
                expected = w @ torch.arange(S, dtype=w.dtype)  # (T,)
                steps = torch.arange(T, dtype=w.dtype)
                if float(expected.std()) > 1e-9:
                    correlations.append(float(torch.corrcoef(torch.stack([expected, steps]))[0, 1]))
    return {"mean_max_weight": round(statistics.mean(max_w), 4),
            "closing_eos_mass": round(statistics.mean(eos_mass), 4),
            "position_correlation": round(statistics.mean(correlations), 4) if correlations else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding tatoeba_deu_eng/deu.txt")
    ap.add_argument("--out", default="runs/bench-tatoeba-attention")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "tatoeba_attention.json"))
    ap.add_argument("--kinds", nargs="+", default=["general", "additive", "dot"])
    ap.add_argument("--minutes", type=float, default=6.0, help="training time per kind")
    ap.add_argument("--pairs", type=int, default=40000, help="training pairs used")
    ap.add_argument("--probe", type=int, default=500, help="validation pairs whose attention is measured")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = split_pairs(Path(args.data) / "tatoeba_deu_eng" / "deu.txt", 10, 0)
    files = {"train": split["train"][: args.pairs], "valid": split["valid"][:2000]}
    for name, pairs in files.items():
        (out / f"{name}.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs), encoding="utf-8")

    results = {}
    for kind in args.kinds:
        run = out / kind
        if run.exists():
            raise SystemExit(f"{run} exists: choose another --out")
        cfg = RunConfig(
            task="seq2seq",
            model=ModelConfig(cell="gru", embedding_size=256, hidden_size=256, num_layers=1, bidirectional=True,
                              dropout=0.2, embedding_dropout=0.2, output_dropout=0.2, adaptive_softmax="2000,6000"),
            data=DataConfig(tokenizer="word", min_freq=2),
            train=TrainConfig(epochs=100, max_minutes=args.minutes, batch_size=128, bptt=0, lr=2e-3, clip=1.0,
                              scheduler="plateau", lr_patience=0, lr_factor=0.5, seed=args.seed,
                              threads=args.threads, log_every=10**9),
            options=Seq2SeqConfig(attention=kind, max_length=20),
        )
        start = time.monotonic()
        result = training.train(cfg, out / "train.tsv", run, valid_path=out / "valid.tsv")
        stats = attention_statistics(runner.load(run), files["valid"][: args.probe])
        results[kind] = {"valid_loss": round(result["best_valid_loss"], 4), "steps": result["steps"], **stats,
                         "seconds": round(time.monotonic() - start, 1)}
        print(kind, results[kind], flush=True)

    summary = {"benchmark": "tatoeba-eng-deu attention diagnostics",
               "setup": f"first {args.pairs} training pairs, {args.minutes} minutes per kind, attention measured "
                        f"teacher-forced on {args.probe} validation pairs",
               "kinds": results, **environment()}
    text = json.dumps(summary, indent=2) + "\n"
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

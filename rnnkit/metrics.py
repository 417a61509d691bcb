"""Task metrics computed from predictions, for the reports of `rnnkit evaluate`.

What is here, by task section. Classification: `confusion_matrix`, `classification_report` (accuracy,
macro F1, per-class precision/recall/F1/support and the confusion matrix). Tagging: `token_accuracy`,
`tag_scores` (plain tags such as UPOS, per tag) and `entity_scores` (entity level with CoNLL-eval
semantics, through seqeval). Sequences: `edit_distance`, `token_error_rate` and `text_metrics` (BLEU and
chrF through sacrebleu, exact match, token error rate). Forecasting: the naive and seasonal-naive
baselines, `mase_scale`, `forecast_errors` (MAE, RMSE, MASE, sMAPE) and `forecast_scores` (those and the
errors in standardised units). Recommendation: `hit_at_k`, `ndcg_at_k`, `mean_reciprocal_rank`,
`coverage_at_k`, `ranking_scores` (the full-ranking report), `sample_negatives` and `sampled_ranks` (SASRec's
protocol of 100 sampled items). What is not: the per-batch figures the trainer logs (each model's
`metrics`), plots (viz.py) and anything that reads files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------- classification


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def classification_report(targets: Sequence[int], predictions: Sequence[int], labels: Sequence[str]
                          ) -> dict[str, Any]:
    """Accuracy, macro F1, per-class figures and the confusion matrix.

    Precision, recall and F1 of a class with no predictions (or no examples) are 0, as scikit-learn's
    `zero_division=0` gives. Macro F1 averages over the classes seen in the targets or the predictions.

    Returns:
        {"accuracy", "macro_f1", "per_class": {label: {precision, recall, f1, support}},
         "confusion": {"labels": [...], "matrix": [[...]]}, "count"}; scores are fractions in [0, 1].
    """
    C = len(labels)
    matrix = confusion_matrix(targets, predictions, C)
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(true_pos, predicted, out=np.zeros(C), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(C), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(C), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    total = int(matrix.sum())
    per_class = {
        label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": float(true_pos.sum() / max(total, 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "count": total,
        "per_class": per_class,
        "confusion": {"labels": list(labels), "matrix": matrix.tolist()},
    }


# ------------------------------------------------------------------------------------------ tagging


def token_accuracy(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    """The share of tokens whose predicted tag equals the gold tag."""
    tokens = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, predicted, strict=True) for a, b in zip(g, p, strict=True))
    return correct / max(tokens, 1)


def tag_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Scores of plain tags (e.g. UPOS), where every token is one decision; fractions in [0, 1].

    `f1` is the micro-average over tags, which equals `token_accuracy` (as do `precision` and `recall`);
    `macro_f1` averages the per-tag F1 of the tags in `gold`; `per_type` gives each tag's figures.
    """
    tokens = sum(len(g) for g in gold)
    accuracy = token_accuracy(gold, predicted)
    tp: Counter[str] = Counter()
    gold_count: Counter[str] = Counter()
    pred_count: Counter[str] = Counter()
    for g, p in zip(gold, predicted, strict=True):
        for a, b in zip(g, p, strict=True):
            gold_count[a] += 1
            pred_count[b] += 1
            tp[a] += a == b
    per_type = {}
    for tag in sorted(gold_count):
        prec = tp[tag] / pred_count[tag] if pred_count[tag] else 0.0
        rec = tp[tag] / gold_count[tag]
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_type[tag] = {"precision": prec, "recall": rec, "f1": f1, "support": gold_count[tag]}
    macro = sum(v["f1"] for v in per_type.values()) / max(len(per_type), 1)
    return {"f1": accuracy, "precision": accuracy, "recall": accuracy, "token_accuracy": accuracy,
            "macro_f1": macro, "f1_kind": "micro-averaged over tags (equals token accuracy)",
            "per_type": per_type, "sentences": len(gold), "tokens": tokens}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], accuracy: float
                  ) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (seqeval, CoNLL-eval semantics) overall and per type.

    An entity counts when its type and both ends match. Fractions in [0, 1].

    Args:
        gold, predicted: the tags of each sentence in BIO.
        accuracy: the token accuracy of the tags as the model wrote them (reported as `token_accuracy`;
            a conversion to BIO can make different tags equal).
    """
    from seqeval.metrics import classification_report as seqeval_report

    report = seqeval_report([list(g) for g in gold], [list(p) for p in predicted], output_dict=True,
                            zero_division=0)
    micro = report["micro avg"]
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in sorted(report.items()) if not k.endswith(" avg")}
    return {"f1": float(micro["f1-score"]), "precision": float(micro["precision"]), "recall": float(micro["recall"]),
            "token_accuracy": accuracy, "f1_kind": "entity level, micro-averaged (CoNLL-eval)",
            "per_type": per_type, "entities": int(micro["support"]), "sentences": len(gold),
            "tokens": sum(len(g) for g in gold)}


# ---------------------------------------------------------------------------------------- sequences


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def token_error_rate(hypotheses: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]]) -> float:
    """Summed edit distance over summed reference length (a corpus-level rate; 0 is perfect)."""
    errors = sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True))
    return errors / max(sum(len(r) for r in references), 1)


def text_metrics(hypotheses: Sequence[str], references: Sequence[str], units: Callable[[str], Sequence[Any]]
                 ) -> dict[str, float]:
    """BLEU and chrF (sacrebleu, 0-100), exact match and token error rate (fractions).

    Args:
        hypotheses, references: one text each.
        units: the tokens of a text that the token error rate counts.
    """
    import sacrebleu

    hypotheses, references = list(hypotheses), list(references)
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "exact_match": sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True))
        / max(len(references), 1),
        "token_error_rate": token_error_rate([units(h) for h in hypotheses], [units(r) for r in references]),
    }


# ---------------------------------------------------------------------------------------- forecasting


def naive_forecast(y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """(B, H, C): the last value before each origin, repeated."""
    return np.repeat(y[origins - 1][:, None, :], horizon, axis=1)


def seasonal_naive_forecast(y: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(B, H, C): y[o + h - m * ceil((h + 1) / m)], the value one (or more) seasons back from each step.

    Origins with fewer than `season` values before them fall back to the naive forecast.
    """
    h = np.arange(horizon)
    back = season * np.ceil((h + 1) / season).astype(np.int64)  # (H,) always >= h + 1: strictly in the past
    idx = origins[:, None] + h[None, :] - back[None, :]  # (B, H)
    short = (origins < season)[:, None]
    idx = np.where(short, origins[:, None] - 1, idx)
    return y[idx]


def mase_scale(y: np.ndarray, season: int) -> np.ndarray:
    """(C,) the in-sample mean absolute error of the seasonal-naive forecast (Hyndman & Koehler 2006).

    Falls back to the lag-1 error when the series has season + 1 values or fewer (fewer than two seasonal
    differences to average); columns whose scale is zero get 1 so that MASE stays finite.
    """
    m = season if len(y) > season + 1 else 1
    scale = np.abs(y[m:] - y[:-m]).mean(axis=0) if len(y) > m else np.ones(y.shape[1])
    return np.where(scale > 0, scale, 1.0)


def forecast_errors(truth: np.ndarray, forecast: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, MASE (per-column MAE over `scale`, averaged) and sMAPE of (B, H, C) forecasts.

    sMAPE is a fraction in [0, 2]: the mean of 2|y - f| / (|y| + |f|), terms with y = f = 0 count 0.
    """
    err = forecast - truth
    denom = np.abs(truth) + np.abs(forecast)
    smape_terms = np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1.0), 0.0)
    mae_per_column = np.abs(err).reshape(-1, truth.shape[-1]).mean(axis=0)
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "mase": float((mae_per_column / scale).mean()),
        "smape": float(smape_terms.mean()),
    }


def forecast_scores(truth: np.ndarray, forecast: np.ndarray, scale: np.ndarray, std: np.ndarray
                    ) -> dict[str, float]:
    """`forecast_errors`, and MSE and MAE in standardised units (errors over the (C,) `std`), as the
    ETT papers report them."""
    scaled_err = (forecast - truth) / std
    return {**forecast_errors(truth, forecast, scale), "mse_scaled": float((scaled_err ** 2).mean()),
            "mae_scaled": float(np.abs(scaled_err).mean())}


# ------------------------------------------------------------------------------------------- music


def frame_counts(truth: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of predicted piano-roll frames (N, K) of 0/1."""
    truth, predicted = np.asarray(truth).astype(bool), np.asarray(predicted).astype(bool)
    return (int((truth & predicted).sum()), int((~truth & predicted).sum()), int((truth & ~predicted).sum()))


def frame_accuracy(tp: int, fp: int, fn: int) -> float:
    """Frame-level accuracy of Bay, Ehmann & Downie (2009): TP / (TP + FP + FN), counted over all frames
    (1.0 when nothing sounds and nothing is predicted)."""
    total = tp + fp + fn
    return tp / total if total else 1.0


# --------------------------------------------------------------------------------- recommendation
#
# A rank is 0-based: the number of candidates scored above the true item (0: it came first).


def hit_at_k(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Fraction of cases whose true item is among the first k."""
    r = np.asarray(ranks)
    return float((r < k).mean()) if r.size else 0.0


def ndcg_at_k(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item: 1 / log2(rank + 2) inside the first k, else 0."""
    r = np.asarray(ranks, dtype=np.float64)
    if not r.size:
        return 0.0
    return float(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0).mean())


def mean_reciprocal_rank(ranks: Sequence[int] | np.ndarray) -> float:
    """Mean of 1 / (rank + 1) over every case, untruncated (an unrankable item has rank inf: 0)."""
    r = np.asarray(ranks, dtype=np.float64)
    return float((1.0 / (r + 1.0)).mean()) if r.size else 0.0


def coverage_at_k(top_items: np.ndarray, num_items: int) -> float:
    """Fraction of the catalogue's `num_items` items that appear in at least one top-k list (N, k)."""
    return float(np.unique(np.asarray(top_items)).size / max(num_items, 1))


def ranking_scores(ranks: Sequence[int] | np.ndarray, top_items: np.ndarray, num_items: int) -> dict[str, float]:
    """The full-ranking report: hit@10, ndcg@10, mrr, hit@20, coverage@10 (top_items: (N, >=10))."""
    return {"hit@10": hit_at_k(ranks, 10), "ndcg@10": ndcg_at_k(ranks, 10), "mrr": mean_reciprocal_rank(ranks),
            "hit@20": hit_at_k(ranks, 20), "coverage@10": coverage_at_k(np.asarray(top_items)[:, :10], num_items)}


def sample_negatives(touched: Sequence[set[int]], num_items: int, count: int = 100, seed: int = 0) -> np.ndarray:
    """SASRec's evaluation sample: for each case, `count` items drawn uniformly from 1..num_items-1 among those
    the user never touched (each draw independent, as SASRec draws them; a touched draw is redrawn).

    Args:
        touched: per case, the item rows the user interacted with (history and the true item).
        num_items: V, rows of the catalogue with padding row 0 (items are 1..V-1).
        count: negatives per case.
        seed: fixes the draws.
    Returns:
        (N, count) int64 item rows.
    Raises:
        ValueError when a user touched every item.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(touched), count), dtype=np.int64)
    for n, seen in enumerate(touched):
        if len(seen - {0}) >= num_items - 1:
            raise ValueError(f"case {n}: the user touched every item; none is left to sample")
        filled = 0
        while filled < count:
            draw = rng.integers(1, num_items, size=2 * (count - filled) + 8)
            keep = draw[[int(d) not in seen for d in draw]][:count - filled]
            out[n, filled:filled + keep.size] = keep
            filled += keep.size
    return out


def sampled_ranks(scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """Ranks of true items among sampled negatives: scores (N,) and negative_scores (N, S) -> (N,) ranks."""
    return (np.asarray(negative_scores) > np.asarray(scores)[:, None]).sum(axis=1)

"""Next-item recommendation: event logs to a trained run, and a run to the items a person is likely to want next.

What is here: the batch sources (training windows of item histories, the next item at every position;
validation histories with their held-out item), the `recommend` task (reading CSV/TSV/JSONL/`user item`
files, the leave-one-out split, the item vocabulary with its counts, scoring by full ranking and by SASRec's
sampled protocol beside the most-popular baseline, answers as text or JSON lines, over HTTP with sessions
that carry the recurrent state, and as exported graphs) and `recommend` (top-K items for histories from
Python). What is not: the network and its losses (models/recommender.py), the readers (data/recommend.py),
the metric arithmetic (metrics.py), the HTTP routes (serve/recommend.py) and the training loop.

A run directory holds, besides what every run has: `items.json` (the item ids in embedding-row order and
their counts in the training histories) and, when training split the file itself, `test.json` (the scores
of the held-out last events).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from rnnkit.config import RunConfig, UserError
from rnnkit.data import BucketedSource, pad_sequences
from rnnkit.data.recommend import (
    PAD,
    Event,
    ItemVocabulary,
    histories,
    leave_one_out,
    read_events,
    read_history_lines,
)
from rnnkit.io import write_json, write_output
from rnnkit.metrics import hit_at_k, ndcg_at_k, ranking_scores, sample_negatives, sampled_ranks
from rnnkit.models.recommender import Recommender
from rnnkit.tasks import runner
from rnnkit.tasks.base import GraphModule, LoadedRun, Prepared, Say, Task, check_size

if TYPE_CHECKING:
    from rnnkit.serve.config import ServeConfig

EVAL_BATCH = 256
TEST_FILE = "test.json"
SAMPLED_NEGATIVES = 100  # SASRec's protocol: the true item against 100 items the user never touched
TOP_K = 10
# The report's breakdown by how often the held-out item occurs in the training data: (low, high) inclusive,
# None for no upper bound.
POPULARITY_BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 200), (201, None))


# ------------------------------------------------------------------------------------ batch sources


class WindowSource(BucketedSource):
    """Training: windows of item rows; each batch holds `items` (B, T), `lengths` (B,) and `targets` (B, T),
    the next item after each position (0 past a row's end)."""

    def __init__(self, windows: list[Tensor], batch_size: int, shuffle: bool, seed: int = 0) -> None:
        assert windows, "a source needs at least one window"
        self.windows = windows
        super().__init__([int(w.shape[0]) - 1 for w in windows], batch_size, shuffle, seed)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        for index in self.order(epoch)[start:]:
            items, lengths = pad_sequences([self.windows[i][:-1] for i in index], PAD)  # (B, T)
            targets, _ = pad_sequences([self.windows[i][1:] for i in index], PAD)  # (B, T)
            yield {"items": items, "lengths": lengths, "targets": targets}


class NextItemSource(BucketedSource):
    """Validation: histories, each with its held-out next item (`valid_targets` (B,)), the items to exclude
    from its ranking (`seen` (B, S), 0-padded) and, when given, SASRec's sample of items the user never touched
    (`negatives` (B, 100)), drawn once so that every epoch is scored on the same sample."""

    def __init__(self, inputs: list[Tensor], targets: list[int], seen: list[Tensor], batch_size: int,
                 negatives: Tensor | None = None) -> None:
        assert inputs and len(inputs) == len(targets) == len(seen), "one target and seen set per history"
        assert negatives is None or negatives.shape[0] == len(inputs), "one row of negatives per history"
        self.inputs, self.targets, self.seen, self.negatives = inputs, targets, seen, negatives
        super().__init__([int(x.shape[0]) for x in inputs], batch_size, shuffle=False)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        for index in self.order(epoch)[start:]:
            items, lengths = pad_sequences([self.inputs[i] for i in index], PAD)  # (B, T)
            seen, _ = pad_sequences([self.seen[i] for i in index], PAD)  # (B, S)
            batch = {"items": items, "lengths": lengths, "seen": seen,
                     "valid_targets": torch.tensor([self.targets[i] for i in index])}
            if self.negatives is not None:
                batch["negatives"] = self.negatives[torch.as_tensor(index)]
            yield batch


def _windows(rows: list[int], max_length: int) -> list[list[int]]:
    """A training history cut into windows of at most max_length + 1 items (max_length inputs and their next
    items), from the end backwards, neighbours sharing one item so every next-item pair is trained once."""
    if len(rows) < 2:
        return []
    if max_length == 0 or len(rows) <= max_length + 1:
        return [rows]
    out = []
    end = len(rows)
    while end > 1:
        out.append(rows[max(0, end - max_length - 1):end])
        end -= max_length
    return out[::-1]


def _recent(rows: list[int], max_length: int) -> list[int]:
    return rows[-max_length:] if max_length else rows


# ------------------------------------------------------------------------------------------- cases


@dataclass
class Cases:
    """Histories to score, each with its last event held out.

    Attributes:
        inputs: per case, the known item rows before the last event (at most --max-length, the latest).
        targets: per case, the row of the held-out item (0 when the run does not know it).
        seen: per case, every known row of the history (excluded from the full ranking).
        touched: per case, every known row of the history and the target (never drawn as a negative).
        unknown_history: unknown items skipped in the histories.
        skipped: groups with fewer than two events or no known item before the last.
    """

    inputs: list[list[int]]
    targets: list[int]
    seen: list[set[int]]
    touched: list[set[int]]
    unknown_history: int = 0
    skipped: int = 0


def _cases(groups: dict[str, list[Event]], vocab: ItemVocabulary, max_length: int) -> Cases:
    cases = Cases([], [], [], [])
    for evs in groups.values():
        if len(evs) < 2:
            cases.skipped += 1
            continue
        rows, unknown = vocab.ids(e.item for e in evs[:-1])
        cases.unknown_history += unknown
        if not rows:
            cases.skipped += 1
            continue
        target = vocab.index.get(evs[-1].item, PAD)
        cases.inputs.append(_recent(rows, max_length))
        cases.targets.append(target)
        cases.seen.append(set(rows))
        cases.touched.append({*rows, target} - {PAD})
    return cases


def _source_of(cases: Cases, num_items: int | None = None, seed: int = 0) -> NextItemSource:
    """Validation batches of the cases whose target the run knows; with `num_items`, each with SASRec's sample
    of 100 items its user never touched (fixed by `seed`), for the sampled validation figures."""
    keep = [i for i, t in enumerate(cases.targets) if t != PAD]
    negatives = None
    if num_items is not None and num_items > 1 + max((len(cases.touched[i]) for i in keep), default=0):
        negatives = torch.from_numpy(sample_negatives([cases.touched[i] for i in keep], num_items, SAMPLED_NEGATIVES,
                                                       seed=seed))
    return NextItemSource([torch.tensor(cases.inputs[i]) for i in keep], [cases.targets[i] for i in keep],
                          [torch.tensor(sorted(cases.seen[i])) for i in keep], EVAL_BATCH, negatives)


# --------------------------------------------------------------------------------------------- run


@dataclass
class LoadedRecommender(LoadedRun):
    """A trained recommender with its item vocabulary (ids and training counts)."""

    vocab: ItemVocabulary

    @property
    def max_length(self) -> int:
        return int(self.config.options.max_length)

    def popularity_scores(self) -> Tensor:
        """(V,) the most-popular baseline's scores: training counts, ties broken by row; padding -inf."""
        V = self.vocab.size
        scores = torch.as_tensor(self.vocab.counts, dtype=torch.float64) - torch.arange(V, dtype=torch.float64) / V
        scores[PAD] = float("-inf")
        return scores


def build_model(cfg: RunConfig, num_items: int, popularity: Tensor | None = None) -> Recommender:
    m, o = cfg.model, cfg.options
    if m.bidirectional:
        raise UserError("--bidirectional: a recommender reads a history forwards only (it predicts the next "
                        "event); use --no-bidirectional")
    return Recommender(num_items, embedding_size=m.embedding_size, hidden_size=m.hidden_size,
                       num_layers=m.num_layers, cell=m.cell, dropout=m.dropout, embedding_dropout=m.embedding_dropout,
                       output_dropout=m.output_dropout, loss=o.loss, num_negatives=o.negatives, popularity=popularity,
                       sample_alpha=o.sample_alpha, batch_negatives=o.batch_negatives, score_reg=o.score_reg,
                       residual=o.residual, label_smoothing=o.label_smoothing,
                       monitor=o.monitor, fused=m.fused,
                       recurrent_options=m.recurrent_options())


def _read_groups(cfg: RunConfig, path: str | Path) -> dict[str, list[Event]]:
    o = cfg.options
    return histories(read_events(path, o.user_column, o.item_column, o.time_column, o.session_column))


class RecommendTask(Task):
    """Histories of items in, the items most likely next out (GRU4Rec-style session and sequence models)."""

    name = "recommend"
    summary = "next-item recommendation: event logs (CSV/TSV/JSONL with user and item columns, or 'user item' lines)"
    loaded_type = LoadedRecommender

    # -------------------------------------------------------------------------------- training

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        o, tc = cfg.options, cfg.train
        groups = _read_groups(cfg, train_path)
        state: dict[str, Any] = {}
        if valid_path is None:
            train, valid, test = leave_one_out(groups, str(train_path))
            state["test"] = test
            say(f"no --valid given: leave-one-out over {len(groups):,} users of {train_path}: each one's last event "
                f"for test ({len(test):,}), the one before for validation ({len(valid):,}), the rest for training")
        else:
            train, valid = groups, _read_groups(cfg, valid_path)
        vocab = ItemVocabulary.load(out) if resume else ItemVocabulary.fit(groups, train)
        rows = {g: vocab.ids(e.item for e in evs)[0] for g, evs in train.items()}
        windows = [torch.tensor(w) for r in rows.values() for w in _windows(r, o.max_length)]
        if not windows:
            raise UserError(f"{train_path}: no user has two or more training events; a recommender learns from "
                            "what follows what")
        cases = _cases(valid, vocab, o.max_length)
        if not any(t != PAD for t in cases.targets):
            raise UserError(f"{valid_path or train_path}: no validation history ends in an item of the training "
                            "data")
        train_src = WindowSource(windows, tc.batch_size, shuffle=True, seed=tc.seed)
        valid_src = _source_of(cases, vocab.size, tc.seed)
        m = cfg.model
        events = sum(len(r) for r in rows.values())
        return Prepared(
            train_src, valid_src,
            assets={"vocab": vocab},
            describe=f"recommender: {m.cell} {m.num_layers}x{m.hidden_size}, item embeddings {m.embedding_size}, "
                     f"{o.loss} loss, {vocab.size - 1:,} items, {{params}} parameters; {events:,} training events "
                     f"in {len(windows):,} windows, {len(train_src)} batches per epoch",
            meta={"num_items": vocab.size}, state=state)

    def build_model(self, cfg: RunConfig, vocab: ItemVocabulary) -> Recommender:
        return build_model(cfg, vocab.size, torch.as_tensor(vocab.counts, dtype=torch.float32))

    def save(self, out: Path, prepared: Prepared) -> None:
        prepared.assets["vocab"].save(out)

    def after_training(self, out: Path, prepared: Prepared, say: Say) -> None:
        """Leave-one-out runs score the held-out last events with the best weights (test.json)."""
        test = prepared.state.get("test")
        if not test:
            return
        run = runner.load(out, task=self.name)
        figures = score_groups(run, test)
        write_json(out / TEST_FILE, figures)
        s = figures["sampled"]
        say(f"held-out last events ({figures['users']:,} users): hit@10 {figures['hit@10']:.4f} ndcg@10 "
            f"{figures['ndcg@10']:.4f} mrr {figures['mrr']:.4f} (full ranking); sampled hit@10 {s['hit@10']:.4f} "
            f"ndcg@10 {s['ndcg@10']:.4f}; written to {out / TEST_FILE}")

    # ------------------------------------------------------------------------------ using a run

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        if "residual" not in (meta.get(self.name) or {}):  # a run from before the option: built without it
            cfg.options.residual = False
        vocab = ItemVocabulary.load(run_dir)
        check_size(run_dir, meta, "num_items", vocab.size, f"{run_dir / 'items.json'} has {vocab.size - 1} items "
                                                           "(+1 padding row)")
        return {"vocab": vocab}

    def evaluate(self, run: LoadedRecommender, data_path: str | Path, *, allow_repeats: bool = False,
                 sample_seed: int = 0) -> dict[str, Any]:
        """Each user's last event given every earlier one: full ranking over the catalogue (the user's items
        excluded unless `allow_repeats`), SASRec's sampled protocol, and the most-popular baseline."""
        return score_groups(run, _read_groups(run.config, data_path), allow_repeats=allow_repeats, seed=sample_seed)

    def predict(self, run: LoadedRecommender, input_path: str | Path, output_path: str | Path = "-", *,
                top_k: int = TOP_K, format: str = "text", allow_repeats: bool = False) -> list[dict[str, Any]]:
        """Top-K items per input line (a history of item ids separated by spaces), best first; `format` json
        adds the scores. Unknown items are skipped and counted (on standard error)."""
        if format not in ("text", "json"):
            raise UserError(f"--format: expected text or json; got {format!r}")
        if str(input_path) == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(input_path)
            if not path.is_file():
                raise UserError(f"{path}: no such file (expected one history of item ids per line)")
            lines = path.read_text(encoding="utf-8").splitlines()
        answers = recommend(run, read_history_lines(lines), top_k=top_k, allow_repeats=allow_repeats)
        unknown = sum(a["unknown"] for a in answers)
        if unknown:
            hit = sum(1 for a in answers if a["unknown"])
            print(f"rnnkit: skipped {unknown} unknown item(s) in {hit} of {len(answers)} line(s)", file=sys.stderr)
        if format == "json":
            text = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        else:
            text = "".join(" ".join(a["items"]) + "\n" for a in answers)
        write_output(output_path, text)
        return answers

    # ------------------------------------------------------------------ serving, export, inspect

    limits_input_chars = False

    def answer(self, run: LoadedRecommender, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
        """The service's /predict: each input a history, as a list of item ids or one string of them."""
        found = []
        for i, x in enumerate(inputs):
            if isinstance(x, str):
                found.append(x.split())
            elif isinstance(x, list) and all(isinstance(v, str) for v in x):
                found.append(x)
            else:
                raise UserError(f"inputs.{i}: expected a list of item ids or a string of them; got "
                                f"{type(x).__name__}")
        return recommend(run, found)

    def add_routes(self, app: Any, run: LoadedRecommender, config: ServeConfig) -> None:
        from rnnkit.serve.recommend import add_routes

        add_routes(app, run, config)

    def describe_run(self, run: LoadedRecommender) -> dict[str, Any]:
        return {"items": run.vocab.size - 1, "loss": run.config.options.loss, "max_length": run.max_length}

    def export_graphs(self, run: LoadedRecommender) -> list[Any]:
        """Two graphs: a history (items, lengths) to every item's score, and one event with the state in and out
        (sessions)."""
        from rnnkit.export import Graph

        model = run.model.eval()
        rnn = model.rnn
        V, L, H = run.vocab.size, rnn.num_layers, rnn.hidden_size
        names = ["h", "c"][: rnn.num_states]

        def history(sizes: dict[str, int]) -> tuple[Tensor, ...]:
            B, T = sizes["B"], sizes["T"]
            items = torch.randint(1, V, (B, T))
            lengths = torch.randint(1, T + 1, (B,))
            lengths[0] = T
            return items, lengths

        def event(sizes: dict[str, int]) -> tuple[Tensor, ...]:
            B = sizes["B"]
            return (torch.randint(1, V, (B,)), *(torch.randn(L, B, H) * 0.5 for _ in names))

        return [
            Graph("recommend", _HistoryGraph(model), history({"B": 3, "T": 7}), ["items", "lengths"], ["scores"],
                  {"items": {0: "B", 1: "T"}, "lengths": {0: "B"}}, history,
                  check_sizes=[{"B": 1, "T": 1}, {"B": 5, "T": 19}]),
            Graph("step", _StepGraph(model), event({"B": 3}), ["item", *names],
                  ["scores", *[n + "_out" for n in names]], {"item": {0: "B"}, **{n: {1: "B"} for n in names}},
                  event, check_sizes=[{"B": 1}, {"B": 6}]),
        ]

    def encoder_sequences(self, run: LoadedRecommender, data_path: str | Path
                          ) -> tuple[Any, list[Any], Callable[..., Any]]:
        """Every history of a data file (its latest --max-length + 1 known events), each step named by its item;
        the loss is the next item's at every step."""
        from rnnkit.diagnostics import InspectSequence

        found = []
        for evs in _read_groups(run.config, data_path).values():
            rows = run.vocab.ids(e.item for e in evs)[0]
            rows = rows[-(run.max_length + 1):] if run.max_length else rows
            if len(rows) < 2:
                continue
            items, targets = torch.tensor([rows[:-1]]), torch.tensor([rows[1:]])
            found.append(InspectSequence({"items": items, "lengths": torch.tensor([len(rows) - 1]),
                                          "targets": targets}, [run.vocab.items[r - 1] for r in rows[:-1]]))

        def loss(batch: dict[str, Tensor]) -> Tensor:
            return run.model.loss(batch).loss

        return run.model.rnn, found, loss

    def export_extras(self, run: LoadedRecommender) -> dict[str, Any]:
        return {"items_file": str(run.run_dir / "items.json"), "max_length": run.max_length,
                "score_columns": "column 0 is padding; column i scores items[i - 1] of items_file"}


TASK = RecommendTask()


class _HistoryGraph(GraphModule):
    """Export: items (B, T) and lengths (B,) -> the score of every item after each history (B, V)."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return (self.model(inputs[0], inputs[1]),)


class _StepGraph(GraphModule):
    """Export: one item per row (B,) and the state parts (L, B, H) -> scores (B, V) and the new state parts."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        item, state = inputs[0], inputs[1:]
        scores, new = self.model.step(item, state if len(state) > 1 else state[0])
        return (scores, *(new if isinstance(new, tuple) else (new,)))


# ------------------------------------------------------------------------------------------ scoring


@torch.no_grad()
def _model_scores(run: LoadedRecommender, inputs: Sequence[list[int]]) -> Iterator[tuple[list[int], Tensor]]:
    """(indices, scores (B, V)) for the histories in batches of similar length."""
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for start in range(0, len(order), EVAL_BATCH):
        index = order[start:start + EVAL_BATCH]
        items, lengths = pad_sequences([inputs[i] for i in index], PAD)  # (B, T)
        yield index, run.model(items.to(run.device), lengths.to(run.device)).float().cpu()  # (B, V)


def _exclude(scores: Tensor, seen: Sequence[set[int]], keep: Sequence[int] | None = None) -> Tensor:
    """Scores with each row's seen items at -inf (except the row's `keep` item)."""
    for b, rows in enumerate(seen):
        if rows:
            index = torch.tensor(sorted(rows))
            kept = scores[b, keep[b]].clone() if keep is not None else None
            scores[b, index] = float("-inf")
            if kept is not None:
                scores[b, keep[b]] = kept
    return scores


def _rank_cases(score_batches: Iterator[tuple[list[int], Tensor]], cases: Cases, negatives: np.ndarray,
                allow_repeats: bool) -> dict[str, Any]:
    n = len(cases.targets)
    ranks = np.full(n, np.inf)
    sampled = np.full(n, np.inf)
    tops = np.zeros((n, 10), dtype=np.int64)
    for index, scores in score_batches:
        targets = torch.tensor([cases.targets[i] for i in index])
        raw_target = scores[torch.arange(len(index)), targets]  # (B,)
        neg = scores.gather(1, torch.from_numpy(negatives[index]))  # (B, S)
        if not allow_repeats:
            scores = _exclude(scores, [cases.seen[i] for i in index], targets.tolist())
        target_scores = scores[torch.arange(len(index)), targets]  # (B,)
        above = (scores > target_scores.unsqueeze(1)).sum(dim=1).numpy()  # (B,)
        known = (targets != PAD).numpy()
        ranks[index] = np.where(known, above, np.inf)
        sampled[index] = np.where(known, sampled_ranks(raw_target.numpy(), neg.numpy()), np.inf)
        if not allow_repeats:  # the top lists exclude the seen items, the true one included
            scores = _exclude(scores, [cases.seen[i] for i in index])
        tops[index] = scores.topk(10, dim=1).indices.numpy()
    return {"ranks": ranks, "sampled": sampled, "tops": tops}


def _figures(found: dict[str, Any], num_items: int) -> dict[str, Any]:
    out = ranking_scores(found["ranks"], found["tops"], num_items)
    out["sampled"] = {"hit@10": hit_at_k(found["sampled"], 10), "ndcg@10": ndcg_at_k(found["sampled"], 10)}
    return out


def _by_popularity(found: dict[str, Any], cases: Cases, counts: np.ndarray) -> list[dict[str, Any]]:
    """The figures of the cases whose held-out item the training data holds a given number of times
    (POPULARITY_BUCKETS; empty ones left out): where a model's misses lie, from items it never saw to the head."""
    targets = np.asarray(cases.targets, dtype=np.int64)
    known = targets != PAD
    seen = counts[targets]
    out = []
    for low, high in POPULARITY_BUCKETS:
        mask = known & (seen >= low) & (seen <= (np.inf if high is None else high))
        if not mask.any():
            continue
        ranks, sampled = found["ranks"][mask], found["sampled"][mask]
        out.append({"train_count": str(low) if low == high else f"{low}+" if high is None else f"{low}-{high}",
                    "users": int(mask.sum()), "share": round(float(mask.sum() / known.sum()), 6),
                    "hit@10": hit_at_k(ranks, 10), "ndcg@10": ndcg_at_k(ranks, 10),
                    "sampled_hit@10": hit_at_k(sampled, 10), "sampled_ndcg@10": ndcg_at_k(sampled, 10)})
    return out


def score_groups(run: LoadedRecommender, groups: dict[str, list[Event]], allow_repeats: bool = False,
                 seed: int = 0) -> dict[str, Any]:
    """The report of `evaluate` over histories whose last event is held out (see `RecommendTask.evaluate`)."""
    cases = _cases(groups, run.vocab, run.max_length)
    if not cases.targets:
        raise UserError("the data holds no user with two or more events (a history and the event to predict)")
    V = run.vocab.size
    negatives = sample_negatives(cases.touched, V, SAMPLED_NEGATIVES, seed=seed)
    found = _rank_cases(_model_scores(run, cases.inputs), cases, negatives, allow_repeats)
    model = _figures(found, V - 1)
    popular = run.popularity_scores().float()

    def popular_batches() -> Iterator[tuple[list[int], Tensor]]:
        for start in range(0, len(cases.targets), EVAL_BATCH):
            index = list(range(start, min(start + EVAL_BATCH, len(cases.targets))))
            yield index, popular.expand(len(index), V).clone()

    baseline = _figures(_rank_cases(popular_batches(), cases, negatives, allow_repeats), V - 1)
    unknown_targets = sum(1 for t in cases.targets if t == PAD)
    return {**model, "by_popularity": _by_popularity(found, cases, run.vocab.counts),
            "baselines": {"most_popular": baseline}, "users": len(cases.targets),
            "unknown_targets": unknown_targets, "unknown_history_items": cases.unknown_history,
            "skipped_users": cases.skipped}


# ---------------------------------------------------------------------------------------- answers


def top_items(run: LoadedRecommender, scores: Tensor, seen: set[int], top_k: int, allow_repeats: bool
              ) -> dict[str, Any]:
    """The answer for one history's scores (V,): the top-K item ids, best first, and their scores."""
    scores = scores.clone()
    if not allow_repeats and seen:
        scores[torch.tensor(sorted(seen))] = float("-inf")
    k = min(top_k, int(torch.isfinite(scores).sum()))
    values, index = scores.topk(k)
    return {"items": [run.vocab.items[int(i) - 1] for i in index], "scores": [round(float(v), 6) for v in values]}


def recommend(run: str | Path | LoadedRecommender, histories: Sequence[Sequence[str]], top_k: int = TOP_K,
              allow_repeats: bool = False) -> list[dict[str, Any]]:
    """The top-K next items for each history of item ids (oldest first).

    Items the run does not know are skipped and counted; a history of none it knows is answered with the
    most popular items. Items of the history are left out of its answer unless `allow_repeats`.

    Returns:
        [{"items": [ids, best first], "scores": [...], "unknown": skipped count}] in the order of `histories`.
    """
    rec = runner.ensure_loaded(run, "recommend")
    if not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"--top-k: expected an integer >= 1; got {top_k!r}")
    rows: list[list[int]] = []
    unknown: list[int] = []
    for h in histories:
        found, skipped = rec.vocab.ids(h)
        rows.append(found)
        unknown.append(skipped)
    answers: list[dict[str, Any]] = [{} for _ in rows]
    with_items = [i for i, r in enumerate(rows) if r]
    inputs = [_recent(rows[i], rec.max_length) for i in with_items]
    for index, scores in _model_scores(rec, inputs):
        for b, j in enumerate(index):
            i = with_items[j]
            answers[i] = top_items(rec, scores[b], set(rows[i]), top_k, allow_repeats)
    popular = rec.popularity_scores().float()
    for i, r in enumerate(rows):
        if not r:
            answers[i] = top_items(rec, popular, set(), top_k, allow_repeats)
        answers[i]["unknown"] = unknown[i]
    return answers

"""Sequence tagging end to end: CoNLL files to a trained run, and a run to tags, entities and scores.

What is here: `TagVocab` (words, characters, word shapes and tags, saved in the run directory as
tag_vocab.json), the batch source of padded sentences, `score` (entity precision, recall and F1 overall
and per type with CoNLL-eval semantics, token accuracy; per-tag figures for plain tags such as UPOS: the
tag scheme read here, the arithmetic in metrics.py), and the `tag` task: reading and holding out
sentences, the vocabularies it keeps, scoring, and its answers (`LoadedTagger.tag`, `predict`, the
service's, the exported emissions with the CRF's scores). What is not: the network (models/tagger.py),
the CRF (crf.py), the readers and tag schemes (data/conll.py), the runner that trains and loads runs
(training.py, runner.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from rnnkit import metrics
from rnnkit.config import RunConfig, UserError
from rnnkit.crf import allowed_transitions
from rnnkit.data import SPECIAL_TOKENS, BucketedSource, read_text
from rnnkit.data.conll import (
    Sentence,
    convert,
    entity_spans,
    looks_like_conll,
    parse_conll,
    prepare_tags,
    read_conll,
    tokenize,
)
from rnnkit.data.split import hold_out
from rnnkit.evaluation import evaluate_model
from rnnkit.io import read_json, write_json, write_output
from rnnkit.models.tagger import IGNORE_INDEX, PAD, UNK, Tagger
from rnnkit.tasks.base import (
    GraphModule,
    LoadedRun,
    Prepared,
    Say,
    Task,
    add_vector_words,
    check_size,
    initialise_from_lm,
    load_source_lm,
    source_record,
    start_embeddings,
    text_inputs,
)
from rnnkit.tasks.contextual import LM_DIR, LMFeatures, StatesGraph, copy_lm_run, kept_runs

if TYPE_CHECKING:
    from rnnkit.serve.config import ServeConfig

VOCAB_FILE = "tag_vocab.json"
MAX_WORD_CHARS = 30  # longer tokens (URLs, mostly) are read by their first characters only
SPECIALS = ["<pad>", "<unk>"]
SHAPES = ["<pad>", "lower", "upper", "title", "mixed", "number", "has-digit", "punct", "mention", "hashtag", "url",
          "other"]


def word_shape(token: str) -> int:
    """A small word-shape class that keeps what lower-casing the word loses (and Twitter's marks)."""
    if token.startswith(("http://", "https://", "www.")):
        name = "url"
    elif len(token) > 1 and token[0] == "@":
        name = "mention"
    elif len(token) > 1 and token[0] == "#":
        name = "hashtag"
    elif token.isdigit():
        name = "number"
    elif any(c.isdigit() for c in token):
        name = "has-digit"
    elif not any(c.isalnum() for c in token):
        name = "punct"
    elif token.islower():
        name = "lower"
    elif token.isupper():
        name = "upper"
    elif token[0].isupper() and (len(token) == 1 or token[1:].islower()):
        name = "title"
    elif any(c.isupper() for c in token):
        name = "mixed"
    else:
        name = "other"
    return SHAPES.index(name)


@dataclass
class TagVocab:
    """The ids a tagger reads and writes: words, characters, tags; and how tags are schemed."""

    words: list[str]
    chars: list[str]
    tags: list[str]
    scheme: str  # what the model learns: bio, bioes or none
    lowercase: bool
    file_scheme: str = ""  # what the training file was in (iob1 is read into bio and written back); "" = scheme

    @property
    def output_scheme(self) -> str:
        """The scheme predictions are written in: the training file's own."""
        return self.file_scheme or self.scheme

    def to_file_scheme(self, tags: list[str]) -> list[str]:
        """Predicted tags (in `scheme`) as the training file would have written them."""
        return convert(tags, "iob1") if self.output_scheme == "iob1" else tags

    def __post_init__(self) -> None:
        self._word_ids = {w: i for i, w in enumerate(self.words)}
        self._char_ids = {c: i for i, c in enumerate(self.chars)}
        self._tag_ids = {t: i for i, t in enumerate(self.tags)}

    @classmethod
    def build(cls, sentences: list[Sentence], extra_tags: list[list[str]], scheme: str, lowercase: bool,
              min_freq: int = 1, max_vocab: int | None = None) -> TagVocab:
        """From training sentences; `extra_tags` (the validation tags) join the tag set only."""
        counts = Counter(_key(t, lowercase) for s in sentences for t in s.tokens)
        words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_freq]
        if max_vocab is not None:
            words = words[:max_vocab]
        chars = sorted({c for s in sentences for t in s.tokens for c in t[:MAX_WORD_CHARS]})
        seen = {t for s in sentences for t in s.tags or []} | {t for tags in extra_tags for t in tags}
        tags = sorted(seen, key=lambda t: (t != "O", t))
        return cls(SPECIALS + words, SPECIALS + chars, tags, scheme, lowercase)

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "file_scheme": self.output_scheme, "lowercase": self.lowercase,
                "tags": self.tags, "chars": self.chars, "words": self.words}

    def save(self, run_dir: Path) -> None:
        write_json(run_dir / VOCAB_FILE, self.to_dict())

    @classmethod
    def load(cls, run_dir: Path) -> TagVocab:
        d = read_json(run_dir / VOCAB_FILE)
        try:
            return cls(d["words"], d["chars"], d["tags"], d["scheme"], d["lowercase"], d.get("file_scheme", ""))
        except KeyError as e:
            raise UserError(f"{run_dir / VOCAB_FILE}: missing key {e}") from None

    def encode(self, tokens: list[str], tags: list[str] | None = None) -> dict[str, list]:
        """One sentence as id lists: words, shapes, chars (a list per word) and, when given, tags."""
        out: dict[str, list] = {
            "words": [self._word_ids.get(_key(t, self.lowercase), UNK) for t in tokens],
            "shapes": [word_shape(t) for t in tokens],
            "chars": [[self._char_ids.get(c, UNK) for c in t[:MAX_WORD_CHARS]] for t in tokens],
        }
        if tags is not None:
            out["tags"] = [self._tag_ids.get(t, IGNORE_INDEX) for t in tags]
        return out

    def span_finder(self) -> Callable[[list[int]], list[tuple[str, int, int]]] | None:
        """Entity spans of a tag-id sequence (None for plain tags, which have no entities)."""
        if self.scheme == "none":
            return None
        names = self.tags

        def find(ids: list[int]) -> list[tuple[str, int, int]]:
            return entity_spans([names[i] if 0 <= i < len(names) else "O" for i in ids])

        return find


def _key(token: str, lowercase: bool) -> str:
    return token.lower() if lowercase else token


def collate(items: list[dict[str, list]]) -> dict[str, torch.Tensor]:
    """Pad encoded sentences into a batch: words, shapes (B, T), chars (B, T, C), lengths (B,), tags (B, T)."""
    B = len(items)
    T = max(len(it["words"]) for it in items)
    C = max(len(c) for it in items for c in it["chars"])
    words = torch.full((B, T), PAD, dtype=torch.long)
    shapes = torch.full((B, T), PAD, dtype=torch.long)
    chars = torch.full((B, T, C), PAD, dtype=torch.long)
    lengths = torch.tensor([len(it["words"]) for it in items], dtype=torch.long)
    for b, it in enumerate(items):
        n = len(it["words"])
        words[b, :n] = torch.tensor(it["words"])
        shapes[b, :n] = torch.tensor(it["shapes"])
        for t, cs in enumerate(it["chars"]):
            chars[b, t, :len(cs)] = torch.tensor(cs)
    batch = {"words": words, "shapes": shapes, "chars": chars, "lengths": lengths}
    if "tags" in items[0]:
        tags = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        for b, it in enumerate(items):
            tags[b, :len(it["tags"])] = torch.tensor(it["tags"])
        batch["tags"] = tags
    if "context" in items[0]:  # language-model features: (n, F) per sentence
        F_ = items[0]["context"].shape[1]
        context = torch.zeros(B, T, F_)
        for b, it in enumerate(items):
            context[b, :len(it["words"])] = it["context"]
        batch["context"] = context
    return batch


def _encoded(vocab: TagVocab, sentences: list[list[str]], tags: list[list[str] | None] | None,
             features: LMFeatures | None) -> list[dict[str, Any]]:
    """Sentences as the model reads them; with language-model features, each gets its (n, F) vectors."""
    items = [vocab.encode(tokens, None if tags is None else tags[i]) for i, tokens in enumerate(sentences)]
    if features is not None:
        for item, vectors in zip(items, features(sentences), strict=True):
            item["context"] = vectors
    return items


class SentenceSource(BucketedSource):
    """Encoded sentences in padded batches of similar length; every batch starts from a zero state."""

    def __init__(self, items: list[dict[str, list]], batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.items = items
        super().__init__([len(it["words"]) for it in items], batch_size, shuffle, seed)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.order(epoch)[start:]:
            yield collate([self.items[i] for i in index])


# ------------------------------------------------------------------------------------------ scores


def score(gold: list[list[str]], predicted: list[list[str]], scheme: str) -> dict[str, Any]:
    """Tagging figures, fractions in [0, 1].

    For entity tags (BIO, BIOES): entity-level `precision`, `recall`, `f1` (an entity counts when its
    type and both ends match, read with CoNLL-eval semantics by seqeval) overall (micro) and
    `per_type`, plus `token_accuracy` (see `metrics.entity_scores`). For plain tags (`none`, e.g. UPOS)
    every token is one decision: `f1` is the micro-average over tags, which equals `token_accuracy`;
    `macro_f1` and `per_type` (per tag) are given as well (see `metrics.tag_scores`).
    """
    if scheme == "none":
        return metrics.tag_scores(gold, predicted)
    # seqeval reads B/I/E/S prefixes as conlleval does; BIO is the common ground of both schemes.
    return metrics.entity_scores([convert(x, "bio") for x in gold], [convert(x, "bio") for x in predicted],
                                 metrics.token_accuracy(gold, predicted))


# ------------------------------------------------------------------------------------------ reading


def _read_labelled(path: str | Path, cfg: RunConfig, scheme: str) -> tuple[list[Sentence], str, str]:
    """Read a tagged file and check its tags under `scheme` (auto/iob1/bio/bioes/none), repairing if allowed.

    Returns the sentences, the scheme their tags are now in and the scheme the file was found in."""
    o = cfg.options
    sentences = read_conll(path, column=o.column)
    sentences, used, repaired, found = prepare_tags(sentences, scheme, o.repair, str(path))
    if repaired:
        print(f"rnnkit: warning: {path}: {repaired} sentence(s) with tags invalid under {found.upper()} were "
              "repaired (--repair)", file=sys.stderr)
    return sentences, used, found


Record = tuple[str, list[str], list[tuple[int, int]]]  # a sentence's text, its tokens, their character offsets


def _line_record(line: str) -> Record:
    """A raw line split into tokens by `data.conll.tokenize`."""
    pieces = tokenize(line)
    return line, [p[0] for p in pieces], [(p[1], p[2]) for p in pieces]


def _raw_records(text: str, name: str, column: str) -> list[Record]:
    """The sentences of raw lines (blank ones skipped) or of a CoNLL/CoNLL-U text; CoNLL sentences read as
    their tokens joined by single spaces."""
    if not looks_like_conll(text, name):
        return [r for r in map(_line_record, text.split("\n")) if r[1]]
    records: list[Record] = []
    for s in parse_conll(text, name, column, require_tags=False):
        offsets, pos = [], 0
        for t in s.tokens:
            offsets.append((pos, pos + len(t)))
            pos += len(t) + 1
        records.append((" ".join(s.tokens), s.tokens, offsets))
    return records


def _tagged(record: Record, tags: list[str], scheme: str) -> dict[str, Any]:
    """A sentence's answer: its text, tokens, tags and token offsets and, for entity tags, its entities with
    their types and character offsets into the text."""
    text, tokens, offsets = record
    found: dict[str, Any] = {"text": text, "tokens": tokens, "tags": tags, "offsets": offsets}
    if scheme != "none":
        entities = found["entities"] = []
        for kind, start, end in entity_spans(tags):
            a, b = offsets[start][0], offsets[end - 1][1]
            entities.append({"type": kind, "text": text[a:b], "start": a, "end": b, "token_start": start,
                             "token_end": end})
    return found


# ---------------------------------------------------------------------------------------- the task


@dataclass
class LoadedTagger(LoadedRun):
    """A trained tagger with its vocabularies, ready to tag."""

    vocab: TagVocab
    features: LMFeatures | None = None

    @torch.no_grad()
    def tag(self, sentences: list[list[str]], batch_size: int = 64) -> list[list[str]]:
        """Tags for tokenised sentences, in order."""
        items = _encoded(self.vocab, sentences, None, self.features)
        source = SentenceSource(items, batch_size, shuffle=False)
        out: list[list[str]] = [[] for _ in sentences]
        for index, batch in zip(source.order(0), source.batches(0), strict=True):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            predicted = self.model.decode(batch).tolist()
            for row, i in enumerate(index):
                out[i] = [self.vocab.tags[t] for t in predicted[row][:len(sentences[i])]]
        return out


class TagTask(Task):
    """Tokens in, one tag per token out: named entities (BIO, BIOES) and parts of speech."""

    name = "tag"
    summary = "sequence tagging: named entities, parts of speech (CoNLL, CoNLL-U)"
    loaded_type = LoadedTagger

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        vocab = TagVocab.load(out) if resume else None
        sentences, scheme, found = _read_labelled(train_path, cfg, vocab.scheme if vocab else cfg.options.scheme)
        if found != scheme:
            say(f"{train_path}: tags found in {found.upper()}; learnt in {scheme.upper()}"
                + (", predictions written back in IOB1" if found == "iob1" and not vocab else ""))
        if valid_path is not None:
            valid, _, _ = _read_labelled(valid_path, cfg, scheme)
        else:
            if len(sentences) < 2:
                raise UserError(f"{train_path}: one sentence only; give --valid or more sentences to hold some out")
            sentences, valid = hold_out(sentences, cfg.data.valid_fraction, "tail", source=str(train_path),
                                        unit="sentences")
            say(f"no --valid given: holding out the last {len(valid)} sentences of {train_path} for validation")
        state: dict[str, Any] = {}
        if vocab is None:
            vocab = TagVocab.build(sentences, [s.tags or [] for s in valid], scheme, cfg.options.lowercase,
                                   cfg.data.min_freq, cfg.data.max_vocab)
            vocab.file_scheme = found if found == "iob1" else ""
            if cfg.model.embeddings:
                words, state["vectors"] = add_vector_words(vocab.words, cfg, say,
                                                           key=lambda w: _key(w, vocab.lowercase))
                vocab = TagVocab(words, vocab.chars, vocab.tags, vocab.scheme, vocab.lowercase, vocab.file_scheme)

        features, meta = None, {}
        o = cfg.options
        if o.init_from and not resume:
            lm = state["lm"] = load_source_lm(cfg, o.init_from, "tag", say, one_direction=False)
            if lm.tokenizer.kind not in ("word", "space"):
                raise UserError(f"--init-from {o.init_from}: a {lm.tokenizer.kind} language model has no word "
                                "embeddings to start a tagger's; give a word-level run (--tokenizer word or space), "
                                "or use it through --lm-features")
            known = set(vocab.words)
            extra = [w for w in dict.fromkeys(_key(lm.tokenizer.token_text(i), vocab.lowercase)
                                              for i in range(len(SPECIAL_TOKENS), lm.tokenizer.vocab_size))
                     if w not in known]
            vocab = TagVocab(vocab.words + extra, vocab.chars, vocab.tags, vocab.scheme, vocab.lowercase,
                             vocab.file_scheme)
            say(f"--init-from {o.init_from}: {len(extra)} of the language model's words join the vocabulary")
            meta["init_from"] = source_record(o.init_from)
        if o.lm_features:
            start = time.perf_counter()
            features = state["features"] = (LMFeatures.load(kept_runs(out)) if resume
                                             else LMFeatures.load(o.lm_features))
            meta["lm_features"] = [source_record(p) for p in (o.lm_features.split(","))]
        tc, m = cfg.train, cfg.model
        train_src = SentenceSource(_encoded(vocab, [s.tokens for s in sentences], [s.tags for s in sentences],
                                            features), tc.batch_size, True, tc.seed)
        valid_src = SentenceSource(_encoded(vocab, [s.tokens for s in valid], [s.tags for s in valid], features),
                                   max(tc.batch_size, 64), False)
        if features is not None:
            say(f"--lm-features: {features.size} features per token from {len(features.models)} language "
                f"model(s), computed once for {len(sentences) + len(valid)} sentences in "
                f"{time.perf_counter() - start:.1f} s")
        output = "CRF" if cfg.options.crf else "softmax"
        return Prepared(train_src, valid_src, {"vocab": vocab, "features": features},
                        describe=f"tagger: {m.cell} {m.num_layers}x{m.hidden_size}"
                                 f"{' bidirectional' if m.bidirectional else ''}, {output} over {len(vocab.tags)} "
                                 f"tags (scheme {scheme}), {len(vocab.words):,} words, {len(vocab.chars)} "
                                 f"characters, {{params}} parameters; {len(sentences)} training sentences, "
                                 f"{len(train_src)} batches per epoch",
                        meta={"num_tags": len(vocab.tags), "scheme": vocab.scheme, **meta},
                        result={"scheme": scheme}, state=state)

    def model_assets(self, assets: dict[str, Any]) -> dict[str, Any]:
        features = assets.get("features")
        return {"vocab": assets["vocab"], "context_size": features.size if features is not None else 0}

    def build_model(self, cfg: RunConfig, vocab: TagVocab, context_size: int = 0) -> Tagger:
        m, o = cfg.model, cfg.options
        allowed = allowed_transitions(vocab.tags, vocab.scheme) if o.crf and vocab.scheme != "none" else None
        return Tagger(len(vocab.words), len(vocab.chars), len(SHAPES), len(vocab.tags), m.embedding_size,
                      m.hidden_size, m.num_layers, m.cell, m.bidirectional, o.char_encoder, o.char_embed,
                      o.char_hidden, dropout=m.dropout, embedding_dropout=m.embedding_dropout,
                      output_dropout=m.output_dropout, word_dropout=o.word_dropout, crf=o.crf, allowed=allowed,
                      span_finder=vocab.span_finder(), fused=m.fused, context_size=context_size)

    def initialise(self, model: Tagger, cfg: RunConfig, prepared: Prepared, say: Say) -> None:
        lm = prepared.state.get("lm")
        if lm is not None:
            initialise_from_lm(model.embedding, model.rnn, prepared.assets["vocab"].words, lm, say,
                               skip=len(SPECIALS))
        start_embeddings(model.embedding, prepared.assets["vocab"].words, cfg, say,
                         vectors=prepared.state.get("vectors"), skip=len(SPECIALS))

    def save(self, out: Path, prepared: Prepared) -> None:
        prepared.assets["vocab"].save(out)
        features = prepared.state.get("features")
        if features is not None:  # the run keeps its language models, so that it stands alone
            for folder, source in zip(("forward", "backward"), features.sources(), strict=False):
                copy_lm_run(source, out / LM_DIR / folder)

    def test_result(self, figures: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return figures, (f"test: f1 {figures['f1']:.4f} precision {figures['precision']:.4f} recall "
                         f"{figures['recall']:.4f} token_accuracy {figures['token_accuracy']:.4f}")

    # ------------------------------------------------------------------------------ using a run

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        vocab = TagVocab.load(run_dir)
        check_size(run_dir, meta, "num_tags", len(vocab.tags), f"{VOCAB_FILE} has {len(vocab.tags)} tags")
        features = LMFeatures.load(kept_runs(run_dir)) if cfg.options.lm_features else None
        return {"vocab": vocab, "features": features}

    def evaluate(self, run: LoadedTagger, data_path: str | Path) -> dict[str, Any]:
        """Score a run on a tagged file: f1, precision, recall, token_accuracy, per_type (see `score`), loss."""
        scheme = run.vocab.scheme
        sentences, _, _ = _read_labelled(data_path, run.config, scheme)
        predicted = run.tag([s.tokens for s in sentences])
        figures = score([s.tags or [] for s in sentences], predicted, scheme)
        items = _encoded(run.vocab, [s.tokens for s in sentences], [s.tags for s in sentences], run.features)
        if all(t != IGNORE_INDEX for it in items for t in it["tags"]):  # the loss needs every tag to be known
            figures["loss"] = evaluate_model(run.model, SentenceSource(items, 64, False), run.device)["loss"]
        return figures

    def predict(self, run: LoadedTagger, input_path: str | Path, output_path: str | Path,
                format: str | None = None) -> None:
        """Tag raw text (one sentence per line) or a CoNLL/CoNLL-U file.

        `format` is `conll` (token TAB tag, a blank line between sentences) or `jsonl` (one object per
        sentence: text, tokens, tags, token offsets and, for entity tags, entities with types and
        character offsets into the text); by default `jsonl` when the output ends in .jsonl, else `conll`.
        Raw lines are split by `data.conll.tokenize`; for CoNLL input the text is the tokens joined by
        single spaces.
        """
        name = "stdin" if str(input_path) == "-" else str(input_path)
        text = sys.stdin.read() if str(input_path) == "-" else read_text(input_path)
        fmt = format or ("jsonl" if str(output_path).endswith(".jsonl") else "conll")
        if fmt not in ("conll", "jsonl"):
            raise UserError(f"--format {fmt}: expected conll or jsonl")
        records = _raw_records(text, name, run.config.options.column)
        if not records:
            raise UserError(f"{name}: no tokens found; expected one sentence per line or a CoNLL file")
        tags = run.tag([r[1] for r in records])
        lines = []
        for record, t in zip(records, tags, strict=True):
            t = run.vocab.to_file_scheme(t)
            if fmt == "conll":
                lines.extend(f"{tok}\t{tag}" for tok, tag in zip(record[1], t, strict=True))
                lines.append("")
            else:
                lines.append(json.dumps(_tagged(record, t, run.vocab.scheme), ensure_ascii=False))
        write_output(output_path, "\n".join(lines) + "\n")

    # ------------------------------------------------------------------ serving, export, inspect

    def answer(self, run: LoadedTagger, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
        """Each input is a line of raw text; the answer holds its tokens, their tags and character offsets and,
        for entity tags, the entities."""
        records = [_line_record(line) for line in text_inputs(inputs, config.max_input_chars)]
        tags = run.tag([r[1] for r in records])
        return [_tagged(record, run.vocab.to_file_scheme(t), run.vocab.scheme)
                for record, t in zip(records, tags, strict=True)]

    def describe_run(self, run: LoadedTagger) -> dict[str, Any]:
        return {"tags": list(run.vocab.tags), "scheme": run.vocab.scheme, "file_scheme": run.vocab.output_scheme}

    def export_graphs(self, run: LoadedTagger) -> list[Any]:
        """The tag scores per token; with a CRF, its transition scores go to export.json for Viterbi outside
        (`export_extras`). With language-model features the scores also read `context` (B, T, F), and each
        language model's states are a graph of their own (`lm_forward_states`, `lm_backward_states`), for the
        features to be made outside as `export_extras` describes."""
        from rnnkit.export import Graph

        model = run.model.eval()
        V, chars_v, F_ = len(run.vocab.words), len(run.vocab.chars), model.context_size

        def make(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
            B, T, C = sizes["B"], sizes["T"], sizes.get("C", 6)
            lengths = torch.randint(1, T + 1, (B,))
            lengths[0] = T
            mask = torch.arange(T)[None] < lengths[:, None]  # (B, T)
            words = torch.randint(2, V, (B, T)) * mask
            shapes = torch.randint(1, 4, (B, T)) * mask
            chars = torch.randint(2, chars_v, (B, T, C)) * mask[..., None]
            context = (torch.randn(B, T, F_) * mask[..., None],) if F_ else ()
            return words, shapes, chars, lengths, *context

        names = ["words", "shapes", "chars", "lengths"] + (["context"] if F_ else [])
        axes = {"words": {0: "B", 1: "T"}, "shapes": {0: "B", 1: "T"}, "chars": {0: "B", 1: "T", 2: "C"},
                "lengths": {0: "B"}, "context": {0: "B", 1: "T"}}
        graphs = [Graph("emissions", _EmissionsGraph(model), make({"B": 3, "T": 7, "C": 5}), names, ["emissions"],
                        {k: v for k, v in axes.items() if k in names}, make,
                        check_sizes=[{"B": 1, "T": 2, "C": 3}, {"B": 4, "T": 13, "C": 9}])]
        if run.features is not None:
            for (lm, reverse) in run.features.models:
                vocab = lm.tokenizer.vocab_size

                def make_lm(sizes: dict[str, int], vocab: int = vocab) -> tuple[torch.Tensor, ...]:
                    B, S = sizes["B"], sizes["S"]
                    lengths = torch.randint(1, S + 1, (B,))
                    lengths[0] = S
                    return torch.randint(4, vocab, (B, S)) * (torch.arange(S)[None] < lengths[:, None]), lengths

                name = f"lm_{'backward' if reverse else 'forward'}_states"
                graphs.append(Graph(name, StatesGraph(lm.model.eval()), make_lm({"B": 2, "S": 9}),
                                    ["tokens", "lengths"], ["states"], {"tokens": {0: "B", 1: "S"},
                                                                        "lengths": {0: "B"}}, make_lm,
                                    check_sizes=[{"B": 1, "S": 3}, {"B": 3, "S": 17}]))
        return graphs

    def export_extras(self, run: LoadedTagger) -> dict[str, Any]:
        """The tag names, and with a CRF its scores."""
        extras: dict[str, Any] = {"tags": list(run.vocab.tags)}
        if run.features is not None:
            extras["lm_features"] = {
                "graphs": [f"lm_{'backward' if r else 'forward'}_states" for _, r in run.features.models],
                "tokenizers": [f"{LM_DIR}/{'backward' if r else 'forward'}/tokenizer.json"
                               for _, r in run.features.models],
                "recipe": "text = line break + tokens joined by single spaces, each token and space encoded on "
                          "its own; forward: the states after each token's last id; backward: the ids reversed, "
                          "the states after each token's first id; the vectors concatenated in that order "
                          "form `context` (B, T, F)"}
        crf = run.model.crf
        if crf is not None:
            # Viterbi over the emissions: score(y) = start[y1] + sum emit[t, yt] + sum trans[y(t-1), yt] + end[yT].
            trans, start, end = (t.detach().tolist() for t in crf._scores())
            extras["crf"] = {"transitions": trans, "start": start, "end": end}
        return extras

    def encoder_sequences(self, run: LoadedTagger, data_path: str | Path) -> tuple[Any, list[Any], Any]:
        """Every sentence of a tagged file; the loss is the last token's tag's cross-entropy."""
        from rnnkit.diagnostics import InspectSequence

        sentences, _, _ = _read_labelled(data_path, run.config, run.vocab.scheme)
        items = _encoded(run.vocab, [s.tokens for s in sentences], [s.tags for s in sentences], run.features)
        found = [InspectSequence(collate([item]), list(s.tokens)) for item, s in zip(items, sentences, strict=True)]

        def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            scores = run.model.emissions(batch)[0, -1]  # (K,): the last token's tag scores
            gold = int(batch["tags"][0, -1])
            target = gold if gold != IGNORE_INDEX else int(scores.argmax())  # a tag the run never saw: its guess
            return F.cross_entropy(scores.float().unsqueeze(0), torch.tensor([target], device=scores.device))

        return run.model.rnn, found, loss


TASK = TagTask()


class _EmissionsGraph(GraphModule):
    """Export: words, shapes (B, T), chars (B, T, C), lengths (B,)[, context (B, T, F)] -> tag scores (B, T, K)."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        words, shapes, chars, lengths = inputs[:4]
        batch = {"words": words, "shapes": shapes, "chars": chars, "lengths": lengths}
        if len(inputs) > 4:
            batch["context"] = inputs[4]
        return (self.model.emissions(batch),)

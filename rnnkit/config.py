"""Typed configuration for rnnkit: the error type for user mistakes, and dataclass configs.

What is here: `UserError` (bad input a person can fix; the CLI prints it without a traceback),
the model/data/train dataclasses with one comment per field and validation in `__post_init__`,
the command-line flag of each field, and TOML loading. What is not: argument parsing (cli.py) and
anything that touches tensors.

Each field's metadata holds its `help` text and, where the command line spells it differently from
the field, its `flag` (torch.nn's names inside, the agreed short flags outside: `hidden_size` is
`--hidden`).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """A mistake in the user's input: a file, an option or a value. Printed without a traceback."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where and what was kept."""


def _opt(default: Any, help: str, flag: str | None = None, choices: tuple | None = None) -> Any:
    meta: dict[str, Any] = {"help": help}
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


CELL_NAMES = ("rnn", "rnn-relu", "lstm", "gru", "layernorm-lstm", "layernorm-gru", "peephole-lstm", "indrnn", "mingru",
              "minlstm")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULERS = ("plateau", "cosine", "constant", "slanted")
UNFREEZING = ("all", "gradual")
TOKENIZERS = ("char", "word", "space", "bpe")


def _check(ok: bool, flag: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserError(f"{flag}: expected {expected}; got {value!r}")


def _numbers(text: str) -> list[float] | None:
    """Numbers separated by commas ("0.9,1.1"; empty: none), or None when one is not a number."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        return None


def _check_types(obj: Any) -> None:
    """Every field holds a value of its annotated type (ints are accepted where floats are expected)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
        if value is None and type(None) in allowed:
            continue
        lists = [t for t in allowed if typing.get_origin(t) is list]
        if lists:
            if isinstance(value, str):  # one name where a list is expected (TOML `target = "OT"`)
                value = [value]
                setattr(obj, f.name, value)
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                setattr(obj, f.name, list(value))
                continue
            raise UserError(f"{flag_of(type(obj), f.name)}: expected a list of names; got {value!r}")
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))
            continue
        ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed
                 if t is not type(None))
        if not ok:
            names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
            raise UserError(f"{flag_of(type(obj), f.name)}: expected {names}; got {value!r}")


@dataclass
class ModelConfig:
    """The network: embedding, recurrent stack and output layer."""

    cell: str = _opt("lstm", "recurrent cell", choices=CELL_NAMES)
    embedding_size: int = _opt(128, "size of the token embeddings", flag="--embed")
    hidden_size: int = _opt(256, "size of the recurrent state", flag="--hidden")
    num_layers: int = _opt(2, "stacked recurrent layers", flag="--layers")
    bidirectional: bool = _opt(False, "read sequences in both directions (not for language models)")
    dropout: float = _opt(0.0, "dropout between recurrent layers")
    embedding_dropout: float = _opt(0.0, "dropout on the embeddings")
    output_dropout: float = _opt(0.0, "dropout on the last recurrent layer's outputs")
    variational: bool = _opt(False, "variational dropout: one mask per sequence for all its steps")
    tie_weights: bool = _opt(False, "share the input embedding with the output layer")
    fused: bool | None = _opt(None, "force (true) or forbid (false) PyTorch's fused kernel; default: automatic")
    recurrent_dropout: float = _opt(0.0, "variational dropout on the state inside the recurrence (needs the loop)")
    zoneout: float = _opt(0.0, "probability that a unit keeps its previous value at a step (needs the loop)")
    weight_drop: float = _opt(0.0, "DropConnect on the recurrent weight matrices (AWD-LSTM's weight drop)")
    embeddings: str | None = _opt(None, "pre-trained word vectors (GloVe, word2vec or fastText text format) to "
                                        "start the word embeddings from; --embed must equal their size")
    adaptive_softmax: str | None = _opt(None, "language models: adaptive softmax cutoffs for large vocabularies, "
                                              "e.g. 2000,10000")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.cell in CELL_NAMES, "--cell", self.cell, f"one of {', '.join(CELL_NAMES)}")
        for name in ("embedding_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, flag_of(ModelConfig, name), value, "an integer >= 1")
        if self.adaptive_softmax is not None:
            _check(bool(self.cutoffs()), "--adaptive-softmax", self.adaptive_softmax,
                   "increasing positive integers separated by commas, e.g. 2000,10000")
        for name in ("dropout", "embedding_dropout", "output_dropout", "recurrent_dropout", "zoneout", "weight_drop"):
            value = getattr(self, name)
            _check(isinstance(value, int | float) and 0 <= value < 1, flag_of(ModelConfig, name), value,
                   "a probability in [0, 1)")


    def recurrent_options(self) -> dict[str, float]:
        """The regularisers on the recurrent path, as keyword arguments of `Recurrent`."""
        return {"recurrent_dropout": self.recurrent_dropout, "zoneout": self.zoneout, "weight_drop": self.weight_drop}

    def cutoffs(self) -> tuple[int, ...] | None:
        """The adaptive softmax cutoffs as integers (empty when malformed, None when off)."""
        if self.adaptive_softmax is None:
            return None
        try:
            values = tuple(int(v) for v in str(self.adaptive_softmax).split(","))
        except ValueError:
            return ()
        ok = all(v > 0 for v in values) and list(values) == sorted(set(values))
        return values if ok else ()

    def cutoffs_below(self, vocab_size: int, vocabulary: str = "vocabulary") -> tuple[int, ...] | None:
        """The cutoffs, refused with a UserError when one reaches the size of the `vocabulary` it splits."""
        cutoffs = self.cutoffs()
        if cutoffs and cutoffs[-1] >= vocab_size:
            raise UserError(f"--adaptive-softmax {self.adaptive_softmax}: every cutoff must be below the "
                            f"{vocabulary} size {vocab_size}")
        return cutoffs


@dataclass
class DataConfig:
    """How text becomes tokens."""

    tokenizer: str = _opt("char", "tokenizer for text", choices=TOKENIZERS)
    min_freq: int = _opt(1, "word tokenizer: words seen fewer times become <unk>")
    max_vocab: int | None = _opt(None, "word tokenizer: keep at most this many words")
    vocab_size: int = _opt(1000, "BPE tokenizer: vocabulary size")
    valid_fraction: float = _opt(0.05, "without --valid, hold out this fraction of the training data (forecast: "
                                       "its last rows, at least one horizon's worth)")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.tokenizer in TOKENIZERS, "--tokenizer", self.tokenizer, f"one of {', '.join(TOKENIZERS)}")
        _check(isinstance(self.min_freq, int) and self.min_freq >= 1, "--min-freq", self.min_freq,
               "an integer >= 1")
        _check(self.max_vocab is None or (isinstance(self.max_vocab, int) and self.max_vocab >= 1),
               "--max-vocab", self.max_vocab, "an integer >= 1")
        _check(isinstance(self.vocab_size, int) and self.vocab_size >= 260, "--vocab-size", self.vocab_size,
               "an integer >= 260 (256 bytes and the special tokens)")
        _check(0 < self.valid_fraction < 0.5, "--valid-fraction", self.valid_fraction, "a fraction in (0, 0.5)")


@dataclass
class TrainConfig:
    """The optimisation: batches, truncated BPTT, optimizer, schedule, stopping and checkpoints."""

    epochs: int = _opt(10, "passes over the training data")
    max_minutes: float | None = _opt(None, "stop training after this many minutes (then evaluate and save)")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps in all")
    batch_size: int = _opt(32, "sequences per batch (rows of the stream for truncated BPTT)")
    bptt: int = _opt(100, "truncated BPTT: steps per chunk of the continuous stream; 0: full BPTT over whole lines")
    lr: float = _opt(2e-3, "learning rate")
    optimizer: str = _opt("adam", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = _opt(0.0, "weight decay (decoupled for adamw)")
    momentum: float = _opt(0.0, "momentum for sgd and rmsprop")
    clip: float = _opt(1.0, "clip the global gradient norm to this value; 0 turns clipping off")
    scheduler: str = _opt("plateau", "learning-rate schedule", choices=SCHEDULERS)
    warmup_steps: int = _opt(0, "linear learning-rate warm-up over this many steps")
    layer_lr_decay: float = _opt(1.0, "discriminative rates: each layer group below the top (head, recurrent "
                                      "layers, embedding) learns at this times the rate of the one above "
                                      "(ULMFiT: 1/2.6 = 0.38); 1: one rate")
    unfreeze: str = _opt("all", "gradual: train only the top layer group in the first epoch, one more group each "
                                "epoch after (ULMFiT); all: every group from the start", choices=UNFREEZING)
    lr_factor: float = _opt(0.5, "plateau schedule: multiply the rate by this when validation stalls")
    lr_patience: int = _opt(0, "plateau schedule: evaluations without improvement tolerated before reducing")
    early_stopping: int = _opt(0, "stop after this many evaluations without improvement; 0 turns it off")
    eval_every: int = _opt(0, "evaluate every this many steps as well as at each epoch's end; 0: epochs only")
    checkpoint_minutes: float = _opt(10.0, "save a resumable checkpoint this often (minutes), besides after every "
                                           "validation")
    skip_nonfinite: bool = _opt(False, "skip batches whose loss or gradient is not finite (counted) instead of "
                                       "stopping the run")
    seed: int = _opt(0, "random seed: fixes initialisation, data order, dropout and sampling")
    device: str = _opt("cpu", "cpu, cuda, cuda:N or auto")
    precision: str = _opt("fp32", "fp32, or bf16 for mixed precision (autocast; weights stay fp32)",
                          choices=("fp32", "bf16"))
    threads: int | None = _opt(None, "CPU threads for PyTorch (default: PyTorch's choice)")
    log_every: int = _opt(50, "log a plain progress line every this many steps when not on a terminal")

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, flag_of(TrainConfig, name), value, "an integer >= 1")
        for name in ("bptt", "warmup_steps", "early_stopping", "eval_every", "lr_patience"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, flag_of(TrainConfig, name), value, "an integer >= 0")
        _check(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
               "--max-steps", self.max_steps, "an integer >= 1")
        _check(self.max_minutes is None or self.max_minutes > 0, "--max-minutes", self.max_minutes,
               "a number > 0")
        _check(isinstance(self.lr, int | float) and self.lr > 0, "--lr", self.lr, "a number > 0")
        _check(self.optimizer in OPTIMIZERS, "--optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _check(self.scheduler in SCHEDULERS, "--scheduler", self.scheduler, f"one of {', '.join(SCHEDULERS)}")
        _check(self.clip >= 0, "--clip", self.clip, "a number >= 0")
        _check(isinstance(self.layer_lr_decay, int | float) and 0 < self.layer_lr_decay <= 1, "--layer-lr-decay",
               self.layer_lr_decay, "a number in (0, 1]")
        _check(self.unfreeze in UNFREEZING, "--unfreeze", self.unfreeze, f"one of {', '.join(UNFREEZING)}")
        _check(0 < self.lr_factor < 1, "--lr-factor", self.lr_factor, "a number in (0, 1)")
        _check(self.checkpoint_minutes > 0, "--checkpoint-minutes", self.checkpoint_minutes, "a number > 0")
        _check(self.weight_decay >= 0, "--weight-decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.momentum < 1, "--momentum", self.momentum, "a number in [0, 1)")
        _check(self.threads is None or self.threads >= 1, "--threads", self.threads, "an integer >= 1")
        _check(self.log_every >= 1, "--log-every", self.log_every, "an integer >= 1")
        _check(self.precision in ("fp32", "bf16"), "--precision", self.precision, "fp32 or bf16")
        dev = self.device
        _check(dev in ("cpu", "cuda", "auto", "mps") or dev.startswith("cuda:"), "--device", dev,
               "cpu, cuda, cuda:N, mps or auto")

# ------------------------------------------------------------------------------ task sections
#
# Each task beyond language modelling has a section of its own ([classify], [tag], [seq2seq],
# [forecast] in TOML; the same names as keys of config.json). Its options appear on the command line
# only under `rnnkit train TASK`.


@dataclass
class LMConfig:
    """Many-to-many, shifted by one: the next token of a text."""

    init_from: str | None = _opt(None, "continue another language-model run on this text: its tokenizer, cell, "
                                       "sizes and weights (a further pass on a task's own text)", flag="--init-from")
    reverse: bool = _opt(False, "read the text from its end: a backward model (features for tagging, scores)")

    def __post_init__(self) -> None:
        _check_types(self)


POOLINGS = ("last", "mean", "max", "attention")
AUDIO_FEATURES = ("logmel", "mfcc")


@dataclass
class ClassifyConfig:
    """Many-to-one: a whole sequence (text or audio) in, one label out."""

    text_column: str = _opt("text", "CSV/TSV/JSONL: the column holding the text")
    label_column: str = _opt("label", "CSV/TSV/JSONL: the column holding the label")
    pooling: str = _opt("max", "how the encoder's outputs become one vector", choices=POOLINGS)
    class_weights: bool = _opt(False, "weight the loss by inverse class frequency (imbalanced data)")
    audio: bool = _opt(False, "the data are manifests of WAV files (columns path,label), not text")
    features: str = _opt("logmel", "audio: log-mel spectrogram or MFCC", choices=AUDIO_FEATURES)
    sample_rate: int = _opt(8000, "audio: resample every recording to this rate (Hz)")
    n_mels: int = _opt(40, "audio: mel bands")
    n_mfcc: int = _opt(13, "audio: MFCC coefficients (with --features mfcc)")
    recording_mean: bool = _opt(False, "audio: subtract each recording's mean per feature (cepstral mean "
                                        "normalisation; helps with unseen speakers and microphones)")
    skip_unreadable: bool = _opt(False, "audio: skip WAV files that cannot be read (counted) instead of stopping")
    speed_perturb: str = _opt("", "audio: extra training copies of every recording at these speeds, e.g. 0.9,1.1 "
                                  "(tempo and pitch together; helps with unseen speakers)")
    pitch_perturb: str = _opt("", "audio: extra training copies shifted by these semitones, e.g. -2,2 (pitch alone)")
    init_from: str | None = _opt(None, "text: start from a language-model run's vocabulary, embeddings and "
                                       "recurrent weights (cell and sizes follow that run)", flag="--init-from")
    freeze_embeddings: bool = _opt(False, "text: keep the token embeddings fixed (useful with --init-from)")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.pooling in POOLINGS, "--pooling", self.pooling, f"one of {', '.join(POOLINGS)}")
        _check(self.features in AUDIO_FEATURES, "--features", self.features, f"one of {', '.join(AUDIO_FEATURES)}")
        for name in ("sample_rate", "n_mels", "n_mfcc"):
            value = getattr(self, name)
            _check(value >= 1, flag_of(ClassifyConfig, name), value, "an integer >= 1")
        speeds = _numbers(self.speed_perturb)
        _check(speeds is not None and all(0.5 <= v <= 2 for v in speeds), "--speed-perturb", self.speed_perturb,
               "speeds in [0.5, 2] separated by commas, e.g. 0.9,1.1")
        _check(_numbers(self.pitch_perturb) is not None, "--pitch-perturb", self.pitch_perturb,
               "semitones separated by commas, e.g. -2,2")


TAG_SCHEMES = ("auto", "iob1", "bio", "bioes", "none")
CHAR_ENCODERS = ("lstm", "cnn", "none")


@dataclass
class TagConfig:
    """Many-to-many, aligned: one tag per token."""

    column: str = _opt("upos", "CoNLL-U: which column holds the tag", choices=("upos", "xpos", "deprel"))
    crf: bool = _opt(False, "a linear-chain CRF output with Viterbi decoding instead of a softmax per token")
    scheme: str = _opt("auto", "tag scheme: detect it (auto; IOB1 files are learnt as BIO and written back "
                       "as IOB1), read the files as iob1, or convert the tags to bio or bioes; none: plain tags",
                       choices=TAG_SCHEMES)
    repair: bool = _opt(False, "repair tag sequences invalid under the scheme instead of stopping")
    char_encoder: str = _opt("lstm", "character-level word representation", choices=CHAR_ENCODERS)
    char_embed: int = _opt(32, "size of the character embeddings")
    char_hidden: int = _opt(64, "size of the character-level word vector")
    word_dropout: float = _opt(0.05, "in training, replace each word by the unknown word with this probability")
    lowercase: bool = _opt(True, "look words up in lower case (their case is kept by a word-shape feature)")
    init_from: str | None = _opt(None, "start the word embeddings and the recurrent layers' forward direction from a "
                                       "word-level language-model run (its words join the vocabulary)",
                                 flag="--init-from")
    lm_features: str | None = _opt(None, "FORWARD_RUN[,BACKWARD_RUN]: frozen language models read each sentence "
                                         "as text; each token gets their states at its ends, beside its embedding "
                                         "(the backward run trained with 'rnnkit train lm --reverse')")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.scheme in TAG_SCHEMES, "--scheme", self.scheme, f"one of {', '.join(TAG_SCHEMES)}")
        _check(self.char_encoder in CHAR_ENCODERS, "--char-encoder", self.char_encoder,
               f"one of {', '.join(CHAR_ENCODERS)}")
        for name in ("char_embed", "char_hidden"):
            value = getattr(self, name)
            _check(value >= 1, flag_of(TagConfig, name), value, "an integer >= 1")
        _check(self.char_encoder != "lstm" or self.char_hidden % 2 == 0, "--char-hidden", self.char_hidden,
               "an even number with --char-encoder lstm (half per direction)")
        _check(0 <= self.word_dropout < 1, "--word-dropout", self.word_dropout, "a probability in [0, 1)")


ATTENTIONS = ("additive", "dot", "general", "none")


@dataclass
class Seq2SeqConfig:
    """Many-to-many, unaligned: an encoder-decoder with attention."""

    source_tokenizer: str = _opt("word", "tokenizer for the source side", choices=TOKENIZERS)
    target_tokenizer: str = _opt("word", "tokenizer for the target side", choices=TOKENIZERS)
    shared_vocab: bool = _opt(False, "one vocabulary for both sides")
    max_length: int = _opt(50, "drop training pairs with a side longer than this many tokens (counted)")
    attention: str = _opt("additive", "attention over the encoder's outputs", choices=ATTENTIONS)
    scheduled_sampling: float = _opt(0.0, "probability of feeding the decoder its own prediction in training")
    copy_unknown: bool = _opt(True, "replace an <unk> output by the most attended source token")
    length_penalty: float = _opt(1.0, "beam search: rank hypotheses by log-probability / length ** this")
    max_output_ratio: float = _opt(2.0, "decoding: at most ratio * source tokens + extra target tokens")
    max_output_extra: int = _opt(10, "decoding: see --max-output-ratio")
    init_from: str | None = _opt(None, "start the encoder (source vocabulary, embeddings, recurrent layers' forward "
                                       "direction) from a language-model run of the source language",
                                 flag="--init-from")

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("source_tokenizer", "target_tokenizer"):
            value = getattr(self, name)
            _check(value in TOKENIZERS, flag_of(Seq2SeqConfig, name), value, f"one of {', '.join(TOKENIZERS)}")
        _check(self.attention in ATTENTIONS, "--attention", self.attention, f"one of {', '.join(ATTENTIONS)}")
        _check(self.max_length >= 1, "--max-length", self.max_length, "an integer >= 1")
        _check(0 <= self.scheduled_sampling <= 1, "--scheduled-sampling", self.scheduled_sampling,
               "a probability in [0, 1]")
        _check(self.length_penalty >= 0, "--length-penalty", self.length_penalty, "a number >= 0")
        _check(self.max_output_ratio > 0, "--max-output-ratio", self.max_output_ratio, "a number > 0")
        _check(self.max_output_extra >= 1, "--max-output-extra", self.max_output_extra, "an integer >= 1")


FORECAST_MODES = ("direct", "autoregressive")
FORECAST_LOSSES = ("mse", "mae", "gaussian", "quantile")
FORECAST_LEVELS = ("mean", "last", "season", "none")


@dataclass
class ForecastConfig:
    """Numbers in, the next numbers out."""

    target: list[str] | None = _opt(None, "the column(s) to forecast (required)")
    time_column: str | None = _opt(None, "the column of timestamps (dates or an index); default: row order")
    covariates: list[str] | None = _opt(None, "other numeric columns read as inputs (their past only); 'all': every "
                                              "other numeric column")
    lookback: int = _opt(96, "steps of history the model reads")
    horizon: int = _opt(24, "steps ahead to forecast")
    mode: str = _opt("direct", "direct: all steps at once from the encoder's state; autoregressive: a decoder "
                               "fed its own predictions", choices=FORECAST_MODES)
    loss: str = _opt("mse", "training loss; gaussian and quantile give prediction intervals", choices=FORECAST_LOSSES)
    quantiles: str = _opt("0.1,0.5,0.9", "quantile loss: the quantiles to predict; gaussian and quantile: the "
                                         "lowest and highest bound the prediction interval")
    calendar: bool = _opt(True, "add calendar features (hour, day of week, ...) derived from the time column")
    impute: bool = _opt(True, "interpolate missing values (counted, with a warning); off: reject them")
    gaps: bool = _opt(True, "accept gaps in a regular time grid, steps 1.5 or more times the usual one (counted, "
                            "with a warning; the rows either side are read as neighbours); off: reject them")
    level: str = _opt("mean", "per-window level subtracted from the targets before the encoder and added back to "
                              "the forecast: the window's mean, its last value, none; season: the mean, and the "
                              "forecast adds to the value one season back", choices=FORECAST_LEVELS)
    anomaly_quantile: float = _opt(0.999, "anomalies: the threshold is this quantile of the validation scores")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.mode in FORECAST_MODES, "--mode", self.mode, f"one of {', '.join(FORECAST_MODES)}")
        _check(self.loss in FORECAST_LOSSES, "--loss", self.loss, f"one of {', '.join(FORECAST_LOSSES)}")
        _check(self.level in FORECAST_LEVELS, "--level", self.level, f"one of {', '.join(FORECAST_LEVELS)}")
        for name in ("lookback", "horizon"):
            value = getattr(self, name)
            _check(value >= 1, flag_of(ForecastConfig, name), value, "an integer >= 1")
        _check(bool(self.quantile_values()), "--quantiles", self.quantiles,
               "two or more increasing numbers in (0, 1) separated by commas, e.g. 0.1,0.5,0.9")
        _check(0 < self.anomaly_quantile < 1, "--anomaly-quantile", self.anomaly_quantile, "a number in (0, 1)")

    def quantile_values(self) -> tuple[float, ...]:
        """The quantiles as numbers (empty when malformed)."""
        try:
            values = tuple(float(v) for v in str(self.quantiles).split(","))
        except ValueError:
            return ()
        ok = len(values) >= 2 and all(0 < v < 1 for v in values) and list(values) == sorted(set(values))
        return values if ok else ()


SPEECH_UNITS = ("char", "word", "bpe")
SPEECH_NORMALISATIONS = ("none", "utterance", "running")


@dataclass
class TranscribeConfig:
    """Speech to text with CTC: recordings in, their transcripts out."""

    units: str = _opt("char", "output units: characters, words (split at spaces) or byte-level BPE pieces "
                              "(--vocab-size)", choices=SPEECH_UNITS)
    sample_rate: int = _opt(16000, "resample every recording to this rate (Hz)")
    n_mels: int = _opt(40, "mel bands of the log-mel features")
    stack: int = _opt(3, "frames stacked into one recurrent step (10 ms frames: 3 gives 30 ms steps)")
    normalise: str = _opt("running", "per-recording normalisation of the features after the training-set "
                                     "scaler: utterance (each recording's mean, whole recordings only), running "
                                     "(the mean so far: streams) or none", choices=SPEECH_NORMALISATIONS)
    speed_perturb: str = _opt("", "versions of every training recording at these speeds, e.g. 0.9,1.1 (tempo and "
                                  "pitch together); each epoch draws one version of each recording")
    pitch_perturb: str = _opt("", "versions of every training recording shifted by these semitones, e.g. -2,2 "
                                  "(pitch alone)")
    freq_masks: int = _opt(0, "SpecAugment: mel bands masked per training recording")
    freq_mask_width: int = _opt(6, "SpecAugment: widest mel band mask")
    time_masks: int = _opt(0, "SpecAugment: time spans masked per training recording")
    time_mask_width: int = _opt(8, "SpecAugment: longest time mask (frames)")
    lowercase: bool = _opt(True, "transcripts in lower case")
    skip_unreadable: bool = _opt(False, "skip audio files that cannot be read (counted) instead of stopping")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.units in SPEECH_UNITS, "--units", self.units, f"one of {', '.join(SPEECH_UNITS)}")
        _check(self.normalise in SPEECH_NORMALISATIONS, "--normalise", self.normalise,
               f"one of {', '.join(SPEECH_NORMALISATIONS)}")
        for name in ("sample_rate", "n_mels", "stack"):
            value = getattr(self, name)
            _check(value >= 1, flag_of(TranscribeConfig, name), value, "an integer >= 1")
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            value = getattr(self, name)
            _check(value >= 0, flag_of(TranscribeConfig, name), value, "an integer >= 0")
        speeds = self.speeds()
        _check(speeds is not None and all(0.5 <= v <= 2 for v in speeds), "--speed-perturb", self.speed_perturb,
               "speeds in [0.5, 2] separated by commas, e.g. 0.9,1.1")
        _check(self.semitones() is not None, "--pitch-perturb", self.pitch_perturb,
               "semitones separated by commas, e.g. -2,2")

    def speeds(self) -> list[float] | None:
        """--speed-perturb as numbers (None when malformed)."""
        return _numbers(self.speed_perturb)

    def semitones(self) -> list[float] | None:
        """--pitch-perturb as numbers (None when malformed)."""
        return _numbers(self.pitch_perturb)
MUSIC_OUTPUTS = ("autoregressive", "independent")


@dataclass
class MusicConfig:
    """Polyphonic music: piano rolls over the 88 keys, a distribution over each frame's keys."""

    frames_per_beat: int = _opt(4, "frames per beat (a quarter note) of the time grid used to read and write MIDI "
                                   "and MusicXML; piano-roll JSON has its frames already")
    output: str = _opt("autoregressive", "autoregressive: the keys of a frame one after another from the lowest, "
                                         "each given the keys below; independent: a Bernoulli per key",
                       choices=MUSIC_OUTPUTS)
    pitch_hidden: int = _opt(64, "autoregressive: size of the recurrence over the keys of a frame")
    pitch_window: int = _opt(12, "autoregressive: keys either side read from the previous frame, and keys below "
                                 "read from the frame being chosen")
    input_dropout: float = _opt(0.0, "dropout on the previous frame read by the recurrence over time")
    tempo: float = _opt(120.0, "beats per minute of the MIDI files written")
    program: int = _opt(0, "General MIDI program of the MIDI files written (0: acoustic grand piano)")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.output in MUSIC_OUTPUTS, "--output", self.output, f"one of {', '.join(MUSIC_OUTPUTS)}")
        for name in ("frames_per_beat", "pitch_hidden"):
            value = getattr(self, name)
            _check(value >= 1, flag_of(MusicConfig, name), value, "an integer >= 1")
        _check(0 <= self.pitch_window <= 87, "--pitch-window", self.pitch_window, "an integer in 0..87")
        _check(0 <= self.input_dropout < 1, "--input-dropout", self.input_dropout, "a probability in [0, 1)")
        _check(0 < self.tempo <= 1000, "--tempo", self.tempo, "beats per minute in (0, 1000]")
        _check(0 <= self.program <= 127, "--program", self.program, "a General MIDI program in 0..127")

RECOMMEND_LOSSES = ("ce", "sampled", "bpr-max", "top1-max")
RECOMMEND_MONITORS = ("full", "sampled")


@dataclass
class RecommendConfig:
    """Next-item recommendation: histories of item ids in, the items most likely next out."""

    user_column: str = _opt("user", "CSV/TSV/JSONL: the column holding the user id")
    item_column: str = _opt("item", "CSV/TSV/JSONL: the column holding the item id")
    time_column: str | None = _opt(None, "CSV/TSV/JSONL: the column of times (numbers or dates) that orders each "
                                         "user's events; default: file order")
    session_column: str | None = _opt(None, "CSV/TSV/JSONL: group events by this column (sessions) instead of "
                                            "by user")
    max_length: int = _opt(50, "the most recent events a history is read with (training windows, evaluation "
                               "and predict); 0: the whole history")
    loss: str = _opt("ce", "ce: softmax over the whole catalogue; sampled: softmax over the batch's targets and "
                           "popularity-drawn negatives with the logQ correction; bpr-max, top1-max: GRU4Rec's "
                           "ranking losses over the same negatives", choices=RECOMMEND_LOSSES)
    negatives: int = _opt(1024, "sampled losses: negatives drawn by popularity per batch (besides the batch's "
                                "own targets)")
    sample_alpha: float = _opt(0.75, "sampled losses: negatives are drawn with probability count ** alpha "
                                     "(0: uniform, 1: by popularity)")
    batch_negatives: bool = _opt(True, "sampled losses: the batch's own targets serve as negatives too "
                                       "(--no-batch-negatives: only the drawn ones, as SASRec trains)")
    score_reg: float = _opt(1.0, "bpr-max: weight of the score regularisation")
    residual: bool = _opt(True, "add each event's own item embedding to the query after it, so items score by "
                                "their likeness to the latest one as well as by the recurrent state "
                                "(--no-residual: the state alone)")
    label_smoothing: float = _opt(0.0, "ce loss: spread this share of each target's probability evenly over the "
                                       "catalogue, so rarely seen items are not pushed without bound below the rest")
    monitor: str = _opt("full", "the validation figure that keeps the best epoch: full (NDCG@10 over the whole "
                                "catalogue) or sampled (NDCG@10 against 100 uniformly drawn items the user never "
                                "touched, SASRec's protocol)", choices=RECOMMEND_MONITORS)

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.monitor in RECOMMEND_MONITORS, "--monitor", self.monitor,
               f"one of {', '.join(RECOMMEND_MONITORS)}")
        _check(self.loss in RECOMMEND_LOSSES, "--loss", self.loss, f"one of {', '.join(RECOMMEND_LOSSES)}")
        _check(self.max_length >= 0, "--max-length", self.max_length, "an integer >= 0")
        _check(self.negatives >= 1, "--negatives", self.negatives, "an integer >= 1")
        _check(0 <= self.sample_alpha <= 1, "--sample-alpha", self.sample_alpha, "a number in [0, 1]")
        _check(self.score_reg >= 0, "--score-reg", self.score_reg, "a number >= 0")
        _check(0 <= self.label_smoothing < 1, "--label-smoothing", self.label_smoothing, "a number in [0, 1)")
        _check(not self.label_smoothing or self.loss == "ce", "--label-smoothing", self.label_smoothing,
               f"0 with --loss {self.loss} (smoothing applies to the full softmax, --loss ce)")


TASK_SECTIONS: dict[str, type] = {
    "lm": LMConfig,
    "classify": ClassifyConfig,
    "tag": TagConfig,
    "seq2seq": Seq2SeqConfig,
    "forecast": ForecastConfig,
    "transcribe": TranscribeConfig,
    "music": MusicConfig,
    "recommend": RecommendConfig,
}

# Where a task's sensible default differs from the shared one: {task: {section: {field: value}}}.
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "lm": {},
    "classify": {"data": {"tokenizer": "word"}, "model": {"bidirectional": True}},
    "tag": {"data": {"tokenizer": "space"},
            "model": {"bidirectional": True, "num_layers": 1, "embedding_size": 100, "hidden_size": 200,
                      "embedding_dropout": 0.5, "output_dropout": 0.5},
            "train": {"batch_size": 16, "lr": 1e-3, "epochs": 30, "early_stopping": 5, "clip": 5.0}},
    "seq2seq": {"model": {"bidirectional": True, "num_layers": 1}, "train": {"bptt": 0}},
    "forecast": {"model": {"hidden_size": 64, "num_layers": 1}, "train": {"batch_size": 64}},
    "transcribe": {"model": {"bidirectional": True, "num_layers": 3, "hidden_size": 192},
                   "train": {"bptt": 0, "batch_size": 16, "epochs": 30, "clip": 5.0, "early_stopping": 8}},
    "music": {"model": {"hidden_size": 200, "num_layers": 1, "output_dropout": 0.3},
              "train": {"batch_size": 16, "bptt": 0, "lr": 2e-3, "epochs": 200, "early_stopping": 20,
                        "lr_patience": 5}},
    "recommend": {"model": {"cell": "gru", "num_layers": 1, "embedding_size": 64, "hidden_size": 64,
                            "embedding_dropout": 0.25, "output_dropout": 0.25},
                  "train": {"batch_size": 128, "lr": 2e-3, "epochs": 20, "early_stopping": 3, "bptt": 0}},
}

TASKS = tuple(TASK_DEFAULTS)



@dataclass
class RunConfig:
    """Everything a run was made from, as written to config.json.

    `options` is the task's own section (`LMConfig` for "lm", `ClassifyConfig` for "classify", ...).
    """

    task: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    options: Any = None

    def __post_init__(self) -> None:
        _check(self.task in TASKS, "task", self.task, f"one of {', '.join(TASKS)}")
        if self.options is None and self.task in TASK_SECTIONS:
            self.options = TASK_SECTIONS[self.task]()

    def to_dict(self) -> dict[str, Any]:
        d = {"task": self.task, "model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
             "train": dataclasses.asdict(self.train)}
        if self.options is not None:
            d[self.task] = dataclasses.asdict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from {task, model, data, train, <task section>}; missing fields take the task's defaults."""
        try:
            task = d["task"]
        except KeyError as e:
            raise UserError(f"{source}: missing key {e}") from None
        _check(task in TASKS, "task", task, f"one of {', '.join(TASKS)}")
        defaults = TASK_DEFAULTS.get(task, {})
        built = {}
        for name, kind in sections_for(task).items():
            values = {**defaults.get(name, {}), **(d.get(name) or {})}
            built[name] = _build(kind, values, f"{source} [{name}]")
        return cls(task=task, model=built["model"], data=built["data"], train=built["train"], options=built.get(task))

    @classmethod
    def create(cls, task: str, **sections: dict[str, Any]) -> RunConfig:
        """The Python API's way in: `RunConfig.create("classify", model={"hidden_size": 64}, classify={...})`."""
        return cls.from_dict({"task": task, **sections}, source="RunConfig.create")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def sections_for(task: str) -> dict[str, type]:
    """The config sections of a task: the shared three, then the task's own (if any)."""
    own = {task: TASK_SECTIONS[task]} if task in TASK_SECTIONS else {}
    return {**SECTIONS, **own}


def default_of(task: str, section: str, name: str) -> Any:
    """A field's default for a task (the task's override, else the dataclass default)."""
    override = TASK_DEFAULTS.get(task, {}).get(section, {})
    if name in override:
        return override[name]
    f = {f.name: f for f in dataclasses.fields(sections_for(task)[section])}[name]
    return f.default


def flag_of(cls: type, name: str) -> str:
    """The command-line flag of a config field (`hidden_size` -> `--hidden`)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("flag", "--" + name.replace("_", "-"))


def _build(cls: type, values: dict[str, Any], source: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
    return cls(**values)


def load_toml(path: str | Path, task: str = "lm") -> dict[str, dict[str, Any]]:
    """Read a TOML config into {section: {field: value}}.

    Sections are `[model]`, `[data]`, `[train]` and the task's own (`[classify]`, ...) with the field
    names of those dataclasses. Top-level keys are also accepted and go to whichever of the task's
    sections has a field of that name.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config: file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    sections = sections_for(task)
    out: dict[str, dict[str, Any]] = {name: {} for name in sections}
    owner = {f.name: section for section, cls in sections.items() for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key in sections and isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(sections[key])}
            for k, v in value.items():
                if k not in known:
                    raise UserError(
                        f"{path}: unknown key '{k}' in [{key}]; expected one of: {', '.join(sorted(known))}"
                    )
                out[key][k] = v
        elif key in TASK_SECTIONS and isinstance(value, dict):
            raise UserError(f"{path}: section [{key}] is for task '{key}', not '{task}'")
        elif key in owner:
            out[owner[key]][key] = value
        else:
            raise UserError(f"{path}: unknown key '{key}'")
    return out

"""seq2seq end to end: reading pairs, the text metrics over the target tokens, and the command line
(train, evaluate --json, predict with beam search and attention plots, unknown names copied through,
inputs longer than any seen, bad files)."""

import contextlib
import io
import json
import random
from pathlib import Path

import pytest
import sacrebleu
import torch

from rnnkit import metrics
from rnnkit.cli import main
from rnnkit.config import RunConfig, UserError
from rnnkit.data import CharTokenizer, WordTokenizer
from rnnkit.data.pairs import read_pairs, read_sources
from rnnkit.tasks import runner, seq2seq
from rnnkit.tasks.training import train

OBJECTS = [("dog", "Hund"), ("cat", "Katze"), ("house", "Haus"), ("car", "Auto"), ("book", "Buch")]


def _name(rng: random.Random) -> str:
    """A made-up name, different every time, so names are rare words (<unk> at min_freq 2)."""
    return "".join(rng.choice("bdgklmnprstvz") + rng.choice("aeiou") for _ in range(3)).capitalize()


def pairs_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        name, (en, de) = _name(rng), rng.choice(OBJECTS)
        kind = rng.randrange(4)
        if kind == 3:
            (en2, de2) = rng.choice(OBJECTS)
            lines.append(f"The {en} and the {en2} sleep.\tDas {de} und das {de2} schlafen.")
        elif kind == 0:
            lines.append(f"My name is {name}.\tIch heiße {name}.\tsource #{rng.randrange(99)}")
        elif kind == 1:
            lines.append(f"{name} has a {en}.\t{name} hat ein {de}.")
        else:
            lines.append(f"I see the {en}.\tIch sehe das {de}.")
    return "\n".join(lines) + "\n"


def cli(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rnnkit: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "train.tsv").write_text(pairs_text(400, 0), encoding="utf-8")
    # Validation pairs like the training pairs the run keeps (none longer than its --max-length 6), so that
    # the best validation loss picks a model that has learned them.
    short = [line for line in pairs_text(60, 1).splitlines() if "sleep" not in line][:40]
    (folder / "valid.tsv").write_text("\n".join(short) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def run(data: Path) -> Path:
    out = data / "run"
    code, stdout, err = cli("train", "seq2seq", "--train", data / "train.tsv", "--valid", data / "valid.tsv",
                            "--out", out, "--hidden", 48, "--embed", 24, "--epochs", 14, "--batch-size", 16,
                            "--lr", 0.01, "--min-freq", 2, "--threads", 1, "--max-length", 6, "--seed", 3)
    assert code == 0, err
    assert "dropped as longer than --max-length 6" in err
    return out


# ----------------------------------------------------------------------------------- reading


def test_read_pairs_ignores_extra_columns_and_blank_lines(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("a b\tc d\tnote\n\n x \t y \n", encoding="utf-8")
    pairs = read_pairs(path)
    assert [(p.source, p.target, p.line) for p in pairs] == [("a b", "c d", 1), ("x", "y", 3)]


@pytest.mark.parametrize(("text", "expected"), [
    ("a\tb\nno tab here\n", r"p\.tsv, line 2: found no tab in 'no tab here'; expected source<TAB>target"),
    ("a\tb\n\t b\n", r"line 2, column 1: the source is empty"),
    ("a\tb\nc\t  \n", r"line 2, column 2: the target is empty"),
    ("\n\n", r"empty"),
])
def test_read_pairs_rejects_bad_lines_naming_file_and_line(tmp_path, text, expected):
    path = tmp_path / "p.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=expected):
        read_pairs(path)


def test_read_sources_keeps_blank_lines_and_takes_the_first_column():
    assert read_sources("a\n\nb\tc\n") == ["a", "", "b"]


# ----------------------------------------------------------------------------------- metrics


def test_text_metrics():
    tok = WordTokenizer.fit("the cat sat on the mat")
    refs = ["the cat sat on the mat", "the cat"]
    hyps = ["the cat sat on the mat", "a cat sat"]
    figures = metrics.text_metrics(hyps, refs, lambda text: seq2seq.target_units(tok, text))
    assert figures["exact_match"] == 0.5
    assert figures["token_error_rate"] == pytest.approx(2 / 8)  # "a" for "the", "sat" inserted
    assert figures["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert figures["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    perfect = metrics.text_metrics(refs, refs, lambda text: seq2seq.target_units(tok, text))
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["token_error_rate"] == 0.0


def test_detokenize_fills_unknowns_with_copies():
    words = WordTokenizer.fit("ich heiße .")
    ids = words.encode("ich heiße Zed .")
    assert seq2seq._detokenize(words, ids, {2: "Zed"}) == "ich heiße Zed."
    chars = CharTokenizer.fit("ab")
    assert seq2seq._detokenize(chars, chars.encode("axb"), {1: "x"}) == "axb"


def test_max_output_lengths():
    assert seq2seq.max_output_lengths(torch.tensor([0, 3]), 1.5, 2).tolist() == [2, 7]


# ------------------------------------------------------------------------------ end to end


def test_train_writes_a_complete_run(run):
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.jsonl", "curves.png", "checkpoint.pt"} <= names
    assert (run / "source" / "tokenizer.json").is_file() and (run / "target" / "tokenizer.json").is_file()
    meta = json.loads((run / "config.json").read_text())
    assert meta["seq2seq"]["attention"] == "additive" and meta["versions"]["rnnkit"]
    assert meta["pairs_dropped"] > 0  # "The dog and the cat sleep." has 7 tokens, the other pairs 5


def test_evaluate_json_reports_the_agreed_figures(run, data):
    code, out, err = cli("evaluate", run, "--data", data / "valid.tsv", "--json", "--beam", 3)
    assert code == 0, err
    figures = json.loads(out)
    assert {"bleu", "chrf", "exact_match", "token_error_rate"} <= set(figures)
    assert figures["bleu"] > 30 and 0 <= figures["exact_match"] <= 1 and 0 <= figures["token_error_rate"] < 0.5


def test_predict_copies_unknown_names_and_keeps_blank_lines(run, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("My name is John.\n\nI see the car.\nMy name is Zebulon.\n", encoding="utf-8")
    code, out, err = cli("predict", run, "--input", inputs, "--beam", 3, "--attention-plot", tmp_path / "plots")
    assert code == 0, err
    lines = out.split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[4] == ""
    assert lines[0] == "Ich heiße John." and lines[3] == "Ich heiße Zebulon."
    assert lines[2] == "Ich sehe das Auto."
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["attention-0001.png", "attention-0003.png", "attention-0004.png"]
    assert (tmp_path / "plots" / plots[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inputs_longer_than_any_seen_are_decoded_within_the_limit(run, tmp_path):
    loaded = runner.load(run)
    long = " ".join(["I see the car."] * 12)  # 60 tokens; training sources have at most 6
    inputs = tmp_path / "long.txt"
    inputs.write_text(long + "\n", encoding="utf-8")
    code, out, err = cli("predict", run, "--input", inputs, "--output", tmp_path / "out.txt")
    assert code == 0 and out == ""
    assert "more than any training source" in err
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 2 and lines[0]
    [t] = seq2seq.translate(loaded, [long])
    assert len(t.tokens) <= 2 * 60 + 10


def test_batched_translation_equals_one_at_a_time_and_beam_one_is_greedy(run, data):
    loaded = runner.load(run)
    sources = [p.source for p in read_pairs(data / "valid.tsv")][:12] + ["", "car car car car car car car car"]
    for beam in (1, 3):
        batched = [t.tokens for t in seq2seq.translate(loaded, sources, beam=beam, batch_size=5)]
        alone = [seq2seq.translate(loaded, [s], beam=beam)[0].tokens for s in sources]
        assert batched == alone
    loaded.config.options.length_penalty = 0.0
    greedy = [t.tokens for t in seq2seq.translate(loaded, sources, beam=1)]
    assert [t.tokens for t in seq2seq.translate(loaded, sources, beam=1)] == greedy
    beam_one = []
    for s in sources:
        ids = torch.tensor([seq2seq._source_ids(loaded.source_tokenizer, s)])
        logits, state = loaded.model.start(ids, torch.tensor([ids.shape[1]]))
        limit = seq2seq.max_output_lengths(torch.tensor([ids.shape[1] - 1]), 2.0, 10)
        beam_one.append(seq2seq.decoding.beam_search(loaded.model, logits, state, 1, limit, eos_id=3,
                                                     length_penalty=0.0)[0][0].tokens)
    assert beam_one == greedy


def test_attention_heatmap_holds_one_row_per_output_token(run):
    loaded = runner.load(run)
    [t] = seq2seq.translate(loaded, ["My name is Zebulon."], attention=True)
    assert t.attention.shape == (len(t.tokens) + 1, len(t.source_units))
    torch.testing.assert_close(t.attention.sum(1), torch.ones(len(t.tokens) + 1))
    assert t.source_units == ["My", "name", "is", "Zebulon", ".", "<eos>"]
    assert "Zebulon" in t.target_units  # the copy shows in the plot's labels


# --------------------------------------------------------------------------- options, errors


@pytest.mark.parametrize(("source", "target", "attention"), [("char", "char", "none"), ("bpe", "space", "dot")])
def test_other_tokenizers_and_attentions_train_and_predict(data, tmp_path, source, target, attention):
    out = tmp_path / "run"
    code, _, err = cli("train", "seq2seq", "--train", data / "valid.tsv", "--out", out, "--hidden", 16,
                       "--embed", 8, "--epochs", 1, "--batch-size", 8, "--threads", 1, "--vocab-size", 300,
                       "--source-tokenizer", source, "--target-tokenizer", target, "--attention", attention)
    assert code == 0, err
    assert "holding out 2 random pairs" in err
    inputs = tmp_path / "in.txt"
    inputs.write_text("I see the dog.\n", encoding="utf-8")
    code, out_text, err = cli("predict", out, "--input", inputs, "--beam", 2)
    assert code == 0, err
    assert len(out_text.split("\n")) == 2
    if attention == "none":
        code, _, err = cli("predict", out, "--input", inputs, "--attention-plot", tmp_path / "p")
        assert "--attention-plot" in error_line(code, err) and "--attention none" in err


def test_shared_vocabulary(data, tmp_path):
    cfg = RunConfig.create("seq2seq", model={"hidden_size": 8, "embedding_size": 8}, train={"epochs": 1},
                           seq2seq={"shared_vocab": True, "source_tokenizer": "char", "target_tokenizer": "char"})
    train(cfg, data / "valid.tsv", tmp_path / "run", log=lambda line: None)
    loaded = runner.load(tmp_path / "run")
    assert loaded.source_tokenizer.tokens == loaded.target_tokenizer.tokens
    assert "ß" in loaded.source_tokenizer.tokens  # German letters in the source vocabulary too


def test_user_errors_are_one_line(data, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Hello\tHallo\nGood morning\n", encoding="utf-8")
    code, _, err = cli("train", "seq2seq", "--train", bad, "--out", tmp_path / "r1")
    assert f"{bad}, line 2: found no tab" in error_line(code, err)
    code, _, err = cli("train", "seq2seq", "--train", data / "valid.tsv", "--out", tmp_path / "r2",
                       "--shared-vocab", "--source-tokenizer", "word", "--target-tokenizer", "char")
    assert "--shared-vocab" in error_line(code, err)
    code, _, err = cli("train", "seq2seq", "--train", data / "valid.tsv", "--out", tmp_path / "r3",
                       "--max-length", 1)
    assert "--max-length 1" in error_line(code, err)


def test_resume_continues_the_run(data, tmp_path):
    out = tmp_path / "run"
    common = ["--train", data / "valid.tsv", "--out", out, "--hidden", 8, "--embed", 8, "--threads", 1,
              "--batch-size", 8]
    assert cli("train", "seq2seq", *common, "--epochs", 1)[0] == 0
    code, stdout, err = cli("train", "seq2seq", *common, "--epochs", 2, "--resume")
    assert code == 0, err
    assert "resuming at epoch 2" in err
    assert json.loads(stdout)["steps"] == 10  # 38 training pairs in batches of 8, twice

"""Transfer from language models: continuing a run, backward models, starting a classifier from one, and the
fine-tuning recipe (layer groups, discriminative rates, gradual unfreezing, the slanted triangular schedule)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch
from torch.testing import assert_close

from rnnkit.cli import main
from rnnkit.config import RunConfig, TrainConfig, UserError
from rnnkit.data import CharTokenizer
from rnnkit.models.base import layer_groups
from rnnkit.models.classifier import SequenceClassifier
from rnnkit.tasks import lm as lm_task
from rnnkit.tasks import runner
from rnnkit.train import LRSchedule, Trainer

CORPUS = "the film was good\nthe plot was bad\nthe acting was superb\na dull and long film\n" * 30
LM_ARGS = ["--tokenizer", "word", "--hidden", "12", "--embed", "6", "--layers", "2", "--epochs", "1", "--bptt", "10",
           "--batch-size", "4", "--threads", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS)
    assert main(["train", "lm", "--train", str(corpus), "--out", str(root / "run"), *LM_ARGS]) == 0
    return root / "run"


def _sentiment(path, n, seed):
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(["good", "superb", "brilliant"] if label == "pos" else ["bad", "dull", "awful"])
        rows.append(f"the film was {word},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------------------ the schedule and groups


def test_slanted_triangular_rates():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    cfg = TrainConfig(lr=0.32, scheduler="slanted")
    schedule = LRSchedule(opt, cfg, total_steps=101)  # cut = 10 steps up, 90 down
    rates = [schedule.rate(t) for t in range(101)]
    assert rates[0] == pytest.approx(0.01)  # base / 32
    assert rates[10] == pytest.approx(0.32) and max(rates) == pytest.approx(0.32)
    assert rates[5] == pytest.approx(0.32 * (1 + 0.5 * 31) / 32)
    assert rates[100] == pytest.approx(0.01)
    assert rates[55] == pytest.approx(0.32 * (1 + 0.5 * 31) / 32)
    assert all(a <= b for a, b in zip(rates[:10], rates[1:11], strict=True))
    assert all(a >= b for a, b in zip(rates[10:-1], rates[11:], strict=True))


def test_layer_groups_cover_every_parameter_once_from_input_to_output():
    model = SequenceClassifier(2, vocab_size=20, embedding_size=6, hidden_size=8, num_layers=3, cell="lstm", bidirectional=True, pooling="attention")
    groups = layer_groups(model)
    assert len(groups) == 5  # embedding, three recurrent layers, the head
    assert [id(p) for p in groups[0]] == [id(model.embedding.weight)]
    assert {id(p) for p in groups[2]} == {id(getattr(model.rnn, n)) for n in
                                          ("weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1",
                                           "weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse",
                                           "bias_hh_l1_reverse")}
    ids = [id(p) for g in groups for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    head = {id(p) for p in groups[-1]}
    assert id(model.output.weight) in head and id(model.attention.proj.weight) in head


class _Batches:
    stateful = False

    def __init__(self, n):
        gen = torch.Generator().manual_seed(0)
        self.items = [{"inputs": torch.randint(1, 20, (4, 5), generator=gen), "lengths": torch.full((4,), 5),
                       "targets": torch.randint(0, 2, (4,), generator=gen)} for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def batches(self, epoch, start=0):
        yield from self.items[start:]


def test_discriminative_rates_per_layer_group(tmp_path):
    model = SequenceClassifier(2, vocab_size=20, embedding_size=6, hidden_size=8, num_layers=2, cell="gru")
    cfg = TrainConfig(lr=0.1, layer_lr_decay=0.5, scheduler="constant", epochs=1, threads=1)
    trainer = Trainer(model, _Batches(2), None, cfg, tmp_path / "run", log=lambda line: None)
    rates = [g["lr"] for g in trainer.optimizer.param_groups]
    assert rates == pytest.approx([0.0125, 0.025, 0.05, 0.1])  # embedding, layer 0, layer 1, head


def test_gradual_unfreezing_keeps_lower_groups_still(tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier(2, vocab_size=20, embedding_size=6, hidden_size=8, num_layers=1, cell="gru", pooling="mean")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    cfg = TrainConfig(lr=0.05, unfreeze="gradual", epochs=1, threads=1, scheduler="constant")
    Trainer(model, _Batches(3), None, cfg, tmp_path / "a", log=lines.append).fit()
    after = model.state_dict()
    # Epoch 1 of 3 groups (embedding, recurrent layer, head): only the head learns.
    assert_close(after["embedding.weight"], start["embedding.weight"], rtol=0, atol=0)
    assert_close(after["rnn.weight_hh_l0"], start["rnn.weight_hh_l0"], rtol=0, atol=0)
    assert not torch.equal(after["output.weight"], start["output.weight"])
    assert any("training the top 1 of 3 layer groups" in line for line in lines)
    # Two epochs: the recurrent layer joins in the second; the embedding stays still until the third.
    torch.manual_seed(0)
    model = SequenceClassifier(2, vocab_size=20, embedding_size=6, hidden_size=8, num_layers=1, cell="gru", pooling="mean")
    cfg = TrainConfig(lr=0.05, unfreeze="gradual", epochs=2, threads=1, scheduler="constant")
    Trainer(model, _Batches(3), None, cfg, tmp_path / "b", log=lambda line: None).fit()
    after = model.state_dict()
    assert_close(after["embedding.weight"], start["embedding.weight"], rtol=0, atol=0)
    assert not torch.equal(after["rnn.weight_hh_l0"], start["rnn.weight_hh_l0"])
    assert all(p.requires_grad for p in model.parameters())  # frozen for training only


def test_bad_recipe_options(tmp_path, capsys):
    train = _sentiment(tmp_path / "t.csv", 10, 0)
    assert main(["train", "classify", "--train", str(train), "--out", str(tmp_path / "r"), "--layer-lr-decay",
                 "0"]) == 2
    assert "--layer-lr-decay: expected a number in (0, 1]" in capsys.readouterr().err
    with pytest.raises(UserError, match="--unfreeze"):
        RunConfig.create("classify", train={"unfreeze": "sometimes"})


# ------------------------------------------------------------------------------- language models


def test_reverse_reads_the_text_from_its_end():
    tok = CharTokenizer.fit("abc\n")
    forward = lm_task._encode(tok, "abc\n")
    assert lm_task._encode(tok, "abc\n", reverse=True).tolist() == forward.flip(0).tolist()
    [line] = lm_task._lines(tok, "abc", reverse=True)
    assert line == tok.encode("cba\n")


def test_backward_model_trains_evaluates_and_refuses_to_generate(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    run = tmp_path / "back"
    assert main(["train", "lm", "--train", str(corpus), "--out", str(run), "--reverse", *LM_ARGS]) == 0
    assert json.loads((run / "config.json").read_text())["lm"]["reverse"] is True
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(corpus), "--json"]) == 0
    backward = json.loads(capsys.readouterr().out)["loss"]
    # Scoring the reversed text with the reversed model is what it learnt: the same text read forwards
    # scores worse (a different word order than it learnt).
    flipped = tmp_path / "flipped.txt"
    flipped.write_text(" ".join(CORPUS.replace("\n", " \n ").split(" ")[::-1]))
    assert main(["evaluate", str(run), "--data", str(flipped), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] > backward
    assert main(["generate", str(run), "--prompt", "the"]) == 2
    assert "backward language model" in capsys.readouterr().err


def test_continuing_a_run_on_new_text(tmp_path, lm_run, capsys):
    text = tmp_path / "new.txt"
    text.write_text("a brilliant film\nan awful plot\n" * 20)
    out = tmp_path / "more"
    # No size options: the structure follows the source run.
    assert main(["train", "lm", "--train", str(text), "--out", str(out), "--init-from", str(lm_run), "--epochs", "1",
                 "--bptt", "10", "--batch-size", "4", "--threads", "1", "--lr", "1e-9"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden_size"] == 12 and config["model"]["num_layers"] == 2
    digest = hashlib.sha256((lm_run / "config.json").read_bytes()).hexdigest()
    assert config["init_from"] == {"run": str(lm_run), "config_sha256": digest}
    a, b = runner.load(lm_run, task="lm"), runner.load(out, task="lm")
    assert a.tokenizer.tokens == b.tokenizer.tokens
    for name, value in a.model.state_dict().items():
        assert_close(b.model.state_dict()[name], value, atol=1e-6, rtol=0)
    capsys.readouterr()
    # Sizes set otherwise, or the other direction, are refused in one line.
    assert main(["train", "lm", "--train", str(text), "--out", str(tmp_path / "x"), "--init-from", str(lm_run),
                 "--hidden", "32"]) == 2
    err = capsys.readouterr().err
    assert "--hidden 32 (the run has 12)" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "lm", "--train", str(text), "--out", str(tmp_path / "y"), "--init-from", str(lm_run),
                 "--reverse"]) == 2
    assert "that run is a forward model; drop --reverse" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a classifier from an LM


def test_classifier_from_a_language_model_keeps_its_layers(tmp_path, lm_run, capsys):
    train = _sentiment(tmp_path / "t.csv", 40, 0)
    out = tmp_path / "clf"
    assert main(["train", "classify", "--train", str(train), "--out", str(out), "--init-from", str(lm_run),
                 "--epochs", "1", "--threads", "1", "--lr", "1e-9", "--pooling", "last"]) == 0
    err = capsys.readouterr().err
    assert "not bidirectional" in err
    clf, lm = runner.load(out, task="classify"), runner.load(lm_run, task="lm")
    config = json.loads((out / "config.json").read_text())
    assert config["init_from"]["run"] == str(lm_run) and config["model"]["num_layers"] == 2
    assert config["model"]["bidirectional"] is False
    V = lm.tokenizer.vocab_size
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "bias_hh_l1"):  # every recurrent layer
        assert_close(getattr(clf.model.rnn, name), getattr(lm.model.rnn, name), atol=1e-6, rtol=0)
    # Every old row is kept; a new word with no capitalised form starts from the mean embedding.
    assert_close(clf.model.embedding.weight[4:V], lm.model.embedding.weight[4:V], atol=1e-6, rtol=0)
    [new_id] = clf.tokenizer.encode("brilliant")
    assert new_id >= V
    assert_close(clf.model.embedding.weight[new_id], lm.model.embedding.weight[4:].mean(0), atol=1e-5, rtol=0)


def test_classifier_init_from_with_vectors_starts_only_the_new_rows(tmp_path, lm_run, capsys):
    train = _sentiment(tmp_path / "t.csv", 40, 0)
    vectors = tmp_path / "v.txt"
    vectors.write_text("film 1 1 1 1 1 1\nbrilliant 2 2 2 2 2 2\nmarvellous 3 3 3 3 3 3\n")
    out = tmp_path / "clf"
    assert main(["train", "classify", "--train", str(train), "--out", str(out), "--init-from", str(lm_run),
                 "--embeddings", str(vectors), "--epochs", "1", "--threads", "1", "--lr", "1e-9",
                 "--pooling", "last"]) == 0
    clf, lm = runner.load(out, task="classify"), runner.load(lm_run, task="lm")
    V = lm.tokenizer.vocab_size
    # The language model's rows are its own ("film" keeps what it learnt, not the file's vector) ...
    assert_close(clf.model.embedding.weight[4:V], lm.model.embedding.weight[4:V], atol=1e-6, rtol=0)
    # ... a training word it lacks starts from its vector, and a word only the vectors know joins the vocabulary.
    for word, value in (("brilliant", 2.0), ("marvellous", 3.0)):
        [i] = clf.tokenizer.encode(word)
        assert i >= V
        assert_close(clf.model.embedding.weight[i], torch.full((6,), value), atol=1e-5, rtol=0)


def test_classifier_init_from_refuses_mismatches(tmp_path, lm_run, capsys):
    train = _sentiment(tmp_path / "t.csv", 10, 0)
    base = ["train", "classify", "--train", str(train), "--init-from", str(lm_run)]
    assert main([*base, "--out", str(tmp_path / "a"), "--embed", "10"]) == 2
    assert "--embed 10 (the run has 6)" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--tokenizer", "char"]) == 2
    assert "--tokenizer char differs from the language model's word" in capsys.readouterr().err


def test_run_config_lm_section_defaults():
    cfg = RunConfig.create("lm")
    assert cfg.options.reverse is False and cfg.options.init_from is None
    with pytest.raises(UserError):
        RunConfig.create("lm", lm={"reverse": "yes"})


# ------------------------------------------------------------------------------ taggers and translators


def test_tagger_from_a_word_language_model(tmp_path, lm_run, capsys):
    train = tmp_path / "t.conll"
    train.write_text("\n\n".join("the\tO\nfilm\tB-W\nwas\tO\ngood\tO" for _ in range(12)) + "\n")
    out = tmp_path / "tag"
    assert main(["train", "tag", "--train", str(train), "--valid", str(train), "--out", str(out), "--init-from",
                 str(lm_run), "--epochs", "1", "--threads", "1", "--lr", "1e-9", "--char-encoder", "none"]) == 0
    assert "of the language model's words join the vocabulary" in capsys.readouterr().err
    run, lm = runner.load(out, task="tag"), runner.load(lm_run, task="lm")
    config = json.loads((out / "config.json").read_text())
    assert config["init_from"]["run"] == str(lm_run)
    assert config["model"]["hidden_size"] == 12 and config["model"]["bidirectional"] is True
    words = run.vocab.words
    for word in ("the", "plot", "superb"):  # "plot" and "superb" come from the language model alone
        assert word in words
        assert_close(run.model.embedding.weight[words.index(word)],
                     lm.model.embedding.weight[lm.tokenizer.encode(word)[0]], atol=1e-6, rtol=0)
    # The forward direction is the language model's; the first layer reads the embedding in its first columns.
    assert_close(run.model.rnn.weight_hh_l0, lm.model.rnn.weight_hh_l0, atol=1e-6, rtol=0)
    assert_close(run.model.rnn.weight_ih_l0[:, :6], lm.model.rnn.weight_ih_l0, atol=1e-6, rtol=0)
    assert_close(run.model.rnn.weight_hh_l1, lm.model.rnn.weight_hh_l1, atol=1e-6, rtol=0)


def test_tagger_refuses_a_character_language_model(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    lm = tmp_path / "char"
    assert main(["train", "lm", "--train", str(corpus), "--out", str(lm), "--tokenizer", "char", "--hidden", "8",
                 "--embed", "4", "--layers", "1", "--epochs", "1", "--max-steps", "2", "--threads", "1", "--bptt", "10",
                 "--batch-size", "4"]) == 0
    train = tmp_path / "t.conll"
    train.write_text("the\tO\nfilm\tB-W\n\nthe\tO\nplot\tB-W\n")
    assert main(["train", "tag", "--train", str(train), "--valid", str(train), "--out", str(tmp_path / "r"),
                 "--init-from", str(lm)]) == 2
    assert "a char language model has no word embeddings" in capsys.readouterr().err


def test_translator_encoder_from_a_language_model(tmp_path, lm_run, capsys):
    pairs = tmp_path / "p.tsv"
    pairs.write_text("".join(f"the film was {w}\tder film war {w}\n" for w in ["good", "bad", "superb", "new"] * 5))
    out = tmp_path / "s2s"
    assert main(["train", "seq2seq", "--train", str(pairs), "--valid", str(pairs), "--out", str(out), "--init-from",
                 str(lm_run), "--epochs", "1", "--threads", "1", "--lr", "1e-9"]) == 0
    run, lm = runner.load(out, task="seq2seq"), runner.load(lm_run, task="lm")
    V = lm.tokenizer.vocab_size
    assert run.source_tokenizer.tokens[:V] == lm.tokenizer.tokens  # every old id kept
    assert run.source_tokenizer.vocab_size == V + 1  # "new" joins
    assert_close(run.model.source_embedding.weight[4:V], lm.model.embedding.weight[4:V], atol=1e-6, rtol=0)
    assert_close(run.model.encoder.weight_hh_l1, lm.model.rnn.weight_hh_l1, atol=1e-6, rtol=0)
    assert main(["train", "seq2seq", "--train", str(pairs), "--out", str(tmp_path / "x"), "--init-from",
                 str(lm_run), "--shared-vocab"]) == 2
    assert "drop --shared-vocab" in capsys.readouterr().err

"""Sequence classification: readers, pooling against references, metrics, and the command line end to end."""

from __future__ import annotations

import io
import itertools
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.cli import main
from rnnkit.config import UserError
from rnnkit.data.tabular import check_labels, read_labelled, read_texts
from rnnkit.layers import Recurrent
from rnnkit.metrics import classification_report, confusion_matrix
from rnnkit.models.classifier import POOLINGS, AttentionPooling, SequenceClassifier, pool

# ------------------------------------------------------------------------------------ readers

RECORDS = [("a fine film", "pos"), ("dull, and long", "neg"), ('he said "no"', "neg")]


def _write_all_formats(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("id,text,label\n" + "".join(
        f'{i},"{t.replace(chr(34), chr(34) * 2)}",{y}\n' for i, (t, y) in enumerate(RECORDS)))
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("label\ttext\n" + "".join(f"{y}\t{t.replace(chr(34), '')}\n" for t, y in RECORDS))
    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in RECORDS))
    sst_path = tmp_path / "d.train"
    sst_path.write_text("".join(f"{y} {t}\n" for t, y in RECORDS))
    return csv_path, tsv_path, jsonl_path, sst_path


def test_readers_agree_across_formats(tmp_path):
    csv_path, tsv_path, jsonl_path, sst_path = _write_all_formats(tmp_path)
    for path in (csv_path, jsonl_path, sst_path):
        got = [(r.text, r.label) for r in read_labelled(path)]
        assert got == RECORDS, path
    assert [(r.text, r.label) for r in read_labelled(tsv_path)] == [(t.replace('"', ""), y) for t, y in RECORDS]
    assert read_labelled(csv_path)[1].where == "row 3"  # the header is row 1
    assert read_labelled(sst_path)[2].where == "line 3"


def test_reader_custom_columns_and_labels_kept_as_strings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,stars\ngreat,05\nbad,NA\n")
    records = read_labelled(path, text_column="review", label_column="stars")
    assert [r.label for r in records] == ["05", "NA"]


def test_missing_column_lists_the_columns_found(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nhello,a\n")
    with pytest.raises(UserError, match=r"d\.csv: no column 'text' \(--text-column\); the header has: 'sentence', "
                                        r"'label'"):
        read_labelled(path)


@pytest.mark.parametrize("content,suffix,where", [
    ("text,label\nfine,a\n  ,b\n", ".csv", "row 3"),
    ('{"text": "x", "label": "a"}\n{"text": "", "label": "b"}\n', ".jsonl", "line 2"),
])
def test_empty_text_is_named(tmp_path, content, suffix, where):
    path = tmp_path / f"d{suffix}"
    path.write_text(content)
    with pytest.raises(UserError, match=f"{where}: the text is empty"):
        read_labelled(path)


def test_sst_line_without_text_and_bad_json(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("1 good\n0\n")
    with pytest.raises(UserError, match=r"line 2: found only '0'; expected 'label sentence'"):
        read_labelled(path)
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b" "label"}\n')
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        read_labelled(path)


def test_unseen_label_is_refused_with_the_known_ones():
    check_labels([("row 2", "a")], ["a", "b"], "dev.csv")
    with pytest.raises(UserError, match=r"dev\.csv: row 3: label 'c' was not in the training data; the model knows: "
                                        r"'a', 'b'"):
        check_labels([("row 2", "a"), ("row 3", "c")], ["a", "b"], "dev.csv")


def test_read_texts_without_labels(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("first text\n\nsecond text\n")
    assert [r.text for r in read_texts(path)] == ["first text", "second text"]
    path = tmp_path / "in.csv"
    path.write_text("text\nonly text\n")
    assert [(r.text, r.label) for r in read_texts(path)] == [("only text", None)]


# ------------------------------------------------------------------------------------ pooling


def _reference_pool(row: torch.Tensor, mode: str, attention: AttentionPooling | None, D: int) -> torch.Tensor:
    """Pooling of one unpadded row (t, D*H), written the plain way."""
    if mode == "mean":
        return row.mean(0)
    if mode == "max":
        return row.max(0).values
    if mode == "last":
        H = row.shape[1] // D
        return torch.cat([row[-1, :H], row[0, H:]]) if D == 2 else row[-1]
    scores = torch.stack([attention.score(torch.tanh(attention.proj(o))).squeeze() for o in row])
    weights = torch.softmax(scores, 0)
    return (weights.unsqueeze(1) * row).sum(0)


@pytest.mark.parametrize("mode,bidirectional", list(itertools.product(POOLINGS, [False, True])))
def test_pooling_of_padded_batch_equals_each_row_alone(mode, bidirectional):
    rnn = Recurrent("gru", 3, 4, bidirectional=bidirectional).double()
    D = 2 if bidirectional else 1
    att = AttentionPooling(D * 4).double() if mode == "attention" else None
    lengths = torch.tensor([5, 2, 1, 4])
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    outputs, _ = rnn(x, lengths=lengths)
    pooled = pool(outputs, lengths, mode, num_directions=D, attention=att)  # (B, D*H)
    for b, n in enumerate(lengths.tolist()):
        alone, _ = rnn(x[b:b + 1, :n])
        torch.testing.assert_close(pooled[b], _reference_pool(alone[0], mode, att, D))


def test_last_pooling_equals_torch_lstm_final_states():
    """`last` pooling of a bidirectional LSTM = torch.nn.LSTM's h_n of both directions (packed sequences)."""
    ours = Recurrent("lstm", 3, 5, num_layers=2, bidirectional=True)
    ref = nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    lengths = torch.tensor([6, 3, 1])
    x = torch.randn(3, 6, 3)
    outputs, _ = ours(x, lengths=lengths)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    _, (h_n, _) = ref(packed)
    expected = torch.cat([h_n[-2], h_n[-1]], dim=1)  # last layer: forward, backward
    torch.testing.assert_close(pool(outputs, lengths, "last", num_directions=2), expected)


@pytest.mark.parametrize("mode", ["mean", "max", "attention"])
def test_pooling_gradcheck(mode):
    torch.manual_seed(1)
    att = AttentionPooling(3).double() if mode == "attention" else None
    lengths = torch.tensor([4, 2])
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: pool(t, lengths, mode, attention=att), (x,))


def test_attention_weights_sum_to_one_and_skip_padding():
    att = AttentionPooling(4)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    _, weights = att(torch.randn(2, 3, 4), mask)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    assert weights[0, 2] == 0


def test_class_weighted_loss_matches_torch():
    model = SequenceClassifier(3, vocab_size=10, embedding_size=4, hidden_size=5, pooling="mean",
                               class_weights=torch.tensor([1.0, 2.0, 0.5]))
    batch = {"inputs": torch.randint(1, 10, (6, 4)), "lengths": torch.tensor([4, 3, 2, 4, 1, 2]),
             "targets": torch.tensor([0, 1, 2, 1, 0, 2])}
    out = model.loss(batch)
    logits = model(batch["inputs"], batch["lengths"])
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, batch["targets"], weight=model.class_weights))
    assert out.stats["correct"] == int((logits.argmax(1) == batch["targets"]).sum())
    torch.testing.assert_close(torch.tensor(out.stats["loss_sum"]),
                               F.cross_entropy(logits, batch["targets"], reduction="sum").detach())


def test_feature_inputs_and_padding_do_not_change_answers():
    model = SequenceClassifier(2, input_size=6, hidden_size=8, pooling="attention").eval()
    x = torch.randn(2, 7, 6)
    lengths = torch.tensor([7, 3])
    full = model(x, lengths)
    torch.testing.assert_close(full[1], model(x[1:, :3])[0])


# ------------------------------------------------------------------------------------ metrics


def test_classification_report_against_brute_force():
    rng = random.Random(3)
    C = 4
    targets = [rng.randrange(C - 1) for _ in range(60)]  # class 3 never occurs in the targets
    preds = [rng.randrange(C) for _ in range(60)]
    labels = ["a", "b", "c", "d"]
    report = classification_report(targets, preds, labels)
    f1s = []
    for c, label in enumerate(labels):
        tp = sum(t == c and p == c for t, p in zip(targets, preds, strict=True))
        fp = sum(t != c and p == c for t, p in zip(targets, preds, strict=True))
        fn = sum(t == c and p != c for t, p in zip(targets, preds, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        got = report["per_class"][label]
        assert got["precision"] == pytest.approx(precision) and got["recall"] == pytest.approx(recall)
        assert got["f1"] == pytest.approx(f1) and got["support"] == tp + fn
    assert report["macro_f1"] == pytest.approx(np.mean(f1s))
    assert report["accuracy"] == pytest.approx(np.mean([t == p for t, p in zip(targets, preds, strict=True)]))
    matrix = np.array(report["confusion"]["matrix"])
    assert matrix.sum() == 60 and matrix[1, 2] == sum(t == 1 and p == 2 for t, p in zip(targets, preds, strict=True))
    assert confusion_matrix([0, 1, 1], [1, 1, 0], 2).tolist() == [[0, 1], [1, 1]]


# --------------------------------------------------------------------------- the command line

TINY = ["--hidden", "16", "--embed", "8", "--layers", "1", "--threads", "1", "--batch-size", "16", "--lr", "0.02",
        "--seed", "0"]


def _sentiment(path, n, seed, fmt="csv"):
    rng = random.Random(seed)
    good, bad, filler = ["good", "great", "superb"], ["bad", "awful", "dull"], ["the", "film", "was", "very", "plot"]
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(filler) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(good if label == "pos" else bad))
        rows.append((" ".join(words), label))
    if fmt == "csv":
        path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    else:
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    train = _sentiment(folder / "train.csv", 240, 0)
    valid = _sentiment(folder / "valid.jsonl", 60, 1, fmt="jsonl")
    code = main(["train", "classify", "--train", str(train), "--valid", str(valid), "--out", str(folder / "run"),
                 "--epochs", "6", "--pooling", "attention", "--class-weights", *TINY])
    assert code == 0
    return folder


def test_train_writes_a_complete_run(text_run):
    run = text_run / "run"
    for name in ("config.json", "model.safetensors", "labels.json", "tokenizer.json", "metrics.jsonl", "curves.png",
                 "checkpoint.pt"):
        assert (run / name).exists(), name
    assert json.loads((run / "labels.json").read_text())["labels"] == ["neg", "pos"]
    config = json.loads((run / "config.json").read_text())
    assert config["classify"]["pooling"] == "attention" and "versions" in config


def test_evaluate_json_and_plot(text_run, capsys):
    plot = text_run / "confusion.png"
    code, out, _ = _cli(capsys, "evaluate", text_run / "run", "--data", text_run / "valid.jsonl", "--json",
                        "--plot", plot)
    assert code == 0
    figures = json.loads(out)
    assert figures["accuracy"] >= 0.9
    assert 0 <= figures["macro_f1"] <= 1
    assert set(figures["per_class"]) == {"neg", "pos"}
    assert figures["confusion"]["labels"] == ["neg", "pos"]
    assert np.array(figures["confusion"]["matrix"]).sum() == 60
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_text_lines_and_csv_outputs(text_run, capsys):
    inputs = text_run / "in.txt"
    inputs.write_text("the film was great\nawful plot\n")
    code, out, _ = _cli(capsys, "predict", text_run / "run", "--input", inputs)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "input,label,p_neg,p_pos"
    assert lines[1].startswith("the film was great,pos,") and lines[2].startswith("awful plot,neg,")
    assert sum(float(v) for v in lines[1].split(",")[2:]) == pytest.approx(1.0, abs=1e-5)
    target = text_run / "pred.jsonl"
    code, _, _ = _cli(capsys, "predict", text_run / "run", "--input", text_run / "valid.jsonl", "--output", target)
    answers = [json.loads(line) for line in target.read_text().splitlines()]
    assert code == 0 and len(answers) == 60 and set(answers[0]["probabilities"]) == {"neg", "pos"}


def test_predict_reads_standard_input(text_run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a superb plot\n\n"))
    code, out, _ = _cli(capsys, "predict", text_run / "run", "--format", "jsonl")
    [answer] = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and answer["input"] == "a superb plot" and answer["label"] == "pos"


def test_unseen_validation_label_stops_before_writing(tmp_path, capsys):
    train = _sentiment(tmp_path / "train.csv", 20, 0)
    valid = tmp_path / "valid.csv"
    valid.write_text("text,label\ngood film,pos\nmeh,neutral\n")
    code, _, err = _cli(capsys, "train", "classify", "--train", train, "--valid", valid, "--out", tmp_path / "run",
                        *TINY)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "valid.csv: row 3: label 'neutral' was not in the training data" in err
    assert not (tmp_path / "run").exists()


def test_bad_test_file_is_reported_before_training(tmp_path, capsys):
    train = _sentiment(tmp_path / "train.csv", 20, 0)
    test = tmp_path / "test.tsv"
    test.write_text("text\tlabel\ngood film\tpos\nsomething\t\n")
    code, _, err = _cli(capsys, "train", "classify", "--train", train, "--test", test, "--out", tmp_path / "run",
                        *TINY)
    assert code == 2 and "test.tsv: row 3: the label is empty" in err
    assert not (tmp_path / "run").exists()


def test_missing_column_from_the_command_line(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("sentence,y\ngood,1\nbad,0\n")
    code, _, err = _cli(capsys, "train", "classify", "--train", train, "--out", tmp_path / "run", "--label-column",
                        "y", *TINY)
    assert code == 2 and "no column 'text' (--text-column); the header has: 'sentence', 'y'" in err


def test_resume_continues_to_the_same_weights(tmp_path):
    train = _sentiment(tmp_path / "train.csv", 64, 0)
    valid = _sentiment(tmp_path / "valid.csv", 16, 1)
    common = ["train", "classify", "--train", str(train), "--valid", str(valid), *TINY]
    assert main([*common, "--out", str(tmp_path / "a"), "--epochs", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--epochs", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--epochs", "2", "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_init_from_language_model(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the film was good\nthe plot was bad\nSuperb\n" * 40)
    code = main(["train", "lm", "--train", str(corpus), "--out", str(tmp_path / "lm"), "--tokenizer", "word",
                 "--hidden", "12", "--embed", "6", "--layers", "1", "--epochs", "1", "--bptt", "10",
                 "--batch-size", "4", "--threads", "1"])
    assert code == 0
    train = _sentiment(tmp_path / "train.csv", 40, 0)
    code = main(["train", "classify", "--train", str(train), "--out", str(tmp_path / "clf"), "--init-from",
                 str(tmp_path / "lm"), "--epochs", "1", "--layers", "1", "--threads", "1", "--lr", "1e-9"])
    assert code == 0
    from rnnkit.tasks import runner

    clf, lm_run = runner.load(tmp_path / "clf", task="classify"), runner.load(tmp_path / "lm", task="lm")
    V = lm_run.tokenizer.vocab_size
    # The language model's words keep their ids; the classifier's vocabulary adds the new training words.
    assert clf.tokenizer.token_text(V - 1) == lm_run.tokenizer.token_text(V - 1)
    [new_id] = clf.tokenizer.encode("superb")
    assert new_id >= V  # a new word, starting from the embedding of "Superb"
    [cap_id] = lm_run.tokenizer.encode("Superb")
    torch.testing.assert_close(clf.model.embedding.weight[new_id], lm_run.model.embedding.weight[cap_id],
                               atol=1e-6, rtol=0)
    # With a negligible learning rate the copied weights are still (almost) the language model's.
    torch.testing.assert_close(clf.model.rnn.weight_hh_l0, lm_run.model.rnn.weight_hh_l0, atol=1e-6, rtol=0)
    torch.testing.assert_close(clf.model.embedding.weight[4:V], lm_run.model.embedding.weight[4:V], atol=1e-6, rtol=0)


def test_frozen_embeddings_do_not_move(tmp_path):
    train = _sentiment(tmp_path / "train.csv", 48, 0)
    weights = []
    for epochs in ("1", "3"):
        out = tmp_path / f"run{epochs}"
        assert main(["train", "classify", "--train", str(train), "--out", str(out), "--freeze-embeddings",
                     "--epochs", epochs, *TINY]) == 0
        weights.append(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
    torch.testing.assert_close(weights[0]["embedding.weight"], weights[1]["embedding.weight"], atol=0, rtol=0)
    assert not torch.allclose(weights[0]["rnn.weight_hh_l0"], weights[1]["rnn.weight_hh_l0"])

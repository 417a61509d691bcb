"""The tagger and the tag task: model pieces against references, scores against seqeval, CLI end to end."""

import json
import random
import re

import pytest
import torch
from seqeval.metrics import f1_score
from torch.testing import assert_close

from rnnkit.cli import main
from rnnkit.config import RunConfig, UserError
from rnnkit.crf import allowed_transitions
from rnnkit.data.conll import convert, entity_spans
from rnnkit.models.tagger import IGNORE_INDEX, CharEncoder, Tagger
from rnnkit.tasks import runner, tag

# ---------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_char_vector_of_a_word_ignores_padding(kind):
    enc = CharEncoder(12, 5, 8, kind).eval()
    word = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 11]])
    assert_close(enc(padded, torch.tensor([3, 6]))[0], enc(word, torch.tensor([3]))[0])


def test_char_bilstm_equals_torch_lstm():
    enc = CharEncoder(12, 5, 8, "lstm").eval()
    ref = torch.nn.LSTM(5, 4, bidirectional=True, batch_first=True)
    ref.load_state_dict(enc.rnn.state_dict())
    chars = torch.tensor([[3, 4, 5, 6]])
    _, (h, _) = ref(enc.embedding(chars))
    assert_close(enc(chars, torch.tensor([4]))[0], torch.cat([h[0, 0], h[1, 0]]))


def small_batch(num_tags=5):
    words = torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0]])
    return {"words": words, "shapes": torch.tensor([[1, 2, 3, 1], [1, 1, 0, 0]]),
            "chars": torch.randint(2, 9, (2, 4, 3)) * (words != 0).unsqueeze(2),
            "lengths": torch.tensor([4, 2]),
            "tags": torch.tensor([[0, 1, 2, 0], [3, 4, IGNORE_INDEX, IGNORE_INDEX]])}


@pytest.mark.parametrize("crf", [False, True])
@pytest.mark.parametrize("char_encoder", ["lstm", "cnn", "none"])
def test_a_row_scores_the_same_alone_and_padded_in_a_batch(crf, char_encoder):
    model = Tagger(10, 9, 4, 5, 6, 7, 1, "gru", char_encoder=char_encoder, char_hidden_size=6, crf=crf).eval()
    batch = small_batch()
    alone = {k: v[1:, :2] if v.dim() > 1 else v[1:] for k, v in batch.items()}
    assert_close(model.emissions(batch)[1, :2], model.emissions(alone)[0])
    both, one = model.loss(batch), model.loss(alone)
    assert both.count == 6 and one.count == 2
    first = model.loss({k: v[:1] for k, v in batch.items()})
    assert both.stats["loss_sum"] == pytest.approx(first.stats["loss_sum"] + one.stats["loss_sum"], rel=1e-5)
    assert model.decode(batch)[1, 2:].eq(0).all()


def test_softmax_loss_is_token_cross_entropy():
    model = Tagger(10, 9, 4, 5, 6, 7, 1, "lstm").eval()
    batch = small_batch()
    logits = model.emissions(batch)
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["tags"].flatten(), ignore_index=IGNORE_INDEX)
    assert_close(model.loss(batch).loss, ref)


def test_entity_counts_and_f1_in_validation():
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    finder = tag.TagVocab(["<pad>", "<unk>"], ["<pad>", "<unk>"], tags, "bio", True).span_finder()
    model = Tagger(10, 9, 4, 5, 6, 7, 1, "lstm", crf=True, allowed=allowed_transitions(tags, "bio"),
                   span_finder=finder)
    predicted = torch.tensor([[1, 2, 0, 3], [3, 0, 0, 0]])
    gold = torch.tensor([[1, 2, 0, 1], [3, 4, -100, -100]])
    counts = model.count_entities(predicted, gold, torch.tensor([4, 2]))
    assert counts == {"gold_entities": 3, "predicted_entities": 3, "correct_entities": 1}
    figures = Tagger.metrics({"loss_sum": 1.0, "correct": 3.0, **{k: float(v) for k, v in counts.items()}}, 6)
    assert figures["f1"] == pytest.approx(1 / 3) and figures["token_accuracy"] == 0.5
    assert model.monitor == ("f1", "max")


# ------------------------------------------------------------------------------------------ scores


def test_entity_scores_equal_seqeval_and_schemes_agree():
    rng = random.Random(0)
    gold, pred = [], []
    for _ in range(50):
        n = rng.randint(1, 10)
        gold.append([rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) for _ in range(n)])
        pred.append([rng.choice(["O", "B-PER", "I-PER", "B-LOC"]) for _ in range(n)])
    figures = tag.score(gold, pred, "bio")
    assert figures["f1"] == pytest.approx(f1_score(gold, pred))
    # The same entities written in BIOES score the same.
    bioes = tag.score([convert(g, "bioes") for g in gold], [convert(p, "bioes") for p in pred], "bioes")
    assert bioes["f1"] == pytest.approx(figures["f1"])
    per = figures["per_type"]
    assert set(per) == {"PER", "LOC"}
    assert per["PER"]["support"] == sum(k == "PER" for g in gold for k, _, _ in entity_spans(g))


def test_plain_tag_scores():
    figures = tag.score([["NOUN", "VERB", "NOUN"]], [["NOUN", "NOUN", "NOUN"]], "none")
    assert figures["token_accuracy"] == pytest.approx(2 / 3) and figures["f1"] == figures["token_accuracy"]
    assert figures["per_type"]["NOUN"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert figures["macro_f1"] == pytest.approx(0.4)


def test_word_shapes():
    shapes = [tag.SHAPES[tag.word_shape(w)] for w in ["the", "EU", "Peter", "iPhone", "2017", "B2B", "...", "@bob",
                                                     "#ai", "https://t.co/x"]]
    assert shapes == ["lower", "upper", "title", "mixed", "number", "has-digit", "punct", "mention", "hashtag", "url"]


# ------------------------------------------------------------------------------------------ end to end

PEOPLE = ["Anna Berg", "Omar Diaz", "Li Wei", "John Smith", "Maria Lopez", "Ken Ito"]
PLACES = ["Paris", "Oslo", "Lima", "Cairo", "Berlin", "Quito"]
VERBS = ["visited", "left", "loves", "saw"]


def ner_file(path, n, seed):
    rng = random.Random(seed)
    lines = ["-DOCSTART- O", ""]
    for _ in range(n):
        person, place = rng.choice(PEOPLE).split(), rng.choice(PLACES)
        tokens = [*person, rng.choice(VERBS), place, "today", "."]
        tags = ["B-PER"] + ["I-PER"] * (len(person) - 1) + ["O", "B-LOC", "O", "O"]
        if rng.random() < 0.5:
            tokens, tags = ["yesterday", *tokens], ["O", *tags]
        lines += [f"{t}\t{g}" for t, g in zip(tokens, tags, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path




def fast(epochs=8):
    """Options for a tiny model trained quickly."""
    return ["--embed", "16", "--hidden", "16", "--char-embed", "8", "--char-hidden", "8", "--batch-size", "8",
            "--lr", "0.02", "--threads", "1", "--epochs", str(epochs), "--word-dropout", "0"]


def test_ner_end_to_end_with_crf(tmp_path, capsys):
    train, valid = ner_file(tmp_path / "train.conll", 80, 0), ner_file(tmp_path / "valid.conll", 20, 1)
    run = tmp_path / "run"
    assert main(["train", "tag", "--train", str(train), "--valid", str(valid), "--out", str(run), "--crf",
                 "--scheme", "bioes", *fast()]) == 0
    capsys.readouterr()
    for name in ("config.json", "model.safetensors", "tag_vocab.json", "metrics.jsonl", "curves.png", "checkpoint.pt"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["scheme"] == "bioes"
    assert main(["evaluate", str(run), "--data", str(valid), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["f1"] > 0.9 and figures["token_accuracy"] > 0.9
    assert set(figures["per_type"]) == {"PER", "LOC"}
    # Raw text in, entity spans with character offsets out.
    raw = tmp_path / "raw.txt"
    raw.write_text("Omar Diaz visited Oslo today .\n\nyesterday Li Wei saw Lima today.\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run), "--input", str(raw), "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    first = records[0]
    assert first["tags"] == ["B-PER", "E-PER", "O", "S-LOC", "O", "O"]
    assert first["entities"][0] == {"type": "PER", "text": "Omar Diaz", "start": 0, "end": 9, "token_start": 0,
                                    "token_end": 2}
    for r in records:
        assert all(r["text"][e["start"]:e["end"]] == e["text"] for e in r["entities"])
    # CoNLL in, CoNLL out (stdout), the same number of tokens.
    assert main(["predict", str(run), "--input", str(valid), "--format", "conll"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == sum(1 for line in valid.read_text().splitlines() if line and not line.startswith("-DOC"))


def test_iob1_files_are_learnt_as_bio_and_written_back_as_iob1(tmp_path, capsys):
    def as_iob1(path):
        lines = []
        sentence = []
        for line in path.read_text().splitlines() + [""]:
            if line and not line.startswith("-DOC"):
                sentence.append(line.split("\t"))
                continue
            if sentence:
                tags = convert([t for _, t in sentence], "iob1")
                lines += [f"{w}\t{t}" for (w, _), t in zip(sentence, tags, strict=True)]
                sentence = []
            lines.append(line)
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    train, valid = as_iob1(ner_file(tmp_path / "t.conll", 80, 0)), as_iob1(ner_file(tmp_path / "v.conll", 20, 1))
    assert "B-" not in train.read_text()  # no two adjacent entities of one type: IOB1 has I- only
    run = tmp_path / "run"
    assert main(["train", "tag", "--train", str(train), "--valid", str(valid), "--out", str(run), *fast()]) == 0
    assert "tags found in IOB1; learnt in BIO" in capsys.readouterr().err
    vocab = json.loads((run / "tag_vocab.json").read_text())
    assert vocab["scheme"] == "bio" and vocab["file_scheme"] == "iob1" and "B-PER" in vocab["tags"]
    assert main(["evaluate", str(run), "--data", str(valid), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] > 0.9
    raw = tmp_path / "raw.txt"
    raw.write_text("Omar Diaz visited Oslo today .\n", encoding="utf-8")
    assert main(["predict", str(run), "--input", str(raw), "--format", "conll"]) == 0
    tags = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines() if line]
    assert tags == ["I-PER", "I-PER", "O", "I-LOC", "O", "O"]


def test_pos_end_to_end_on_conllu_and_resume(tmp_path, capsys):
    rows, text = [], []
    rng = random.Random(0)
    for s in range(60):
        words = [("the", "DET"), (rng.choice(["cat", "dog", "bird"]), "NOUN"), (rng.choice(["runs", "sleeps"]), "VERB")]
        text.append(f"# sent_id = {s}")
        text += [f"{i}\t{w}\t{w}\t{p}\t_\t_\t0\tdep\t_\t_" for i, (w, p) in enumerate(words, 1)]
        text.append("")
        rows.append(words)
    data = tmp_path / "pos.conllu"
    data.write_text("\n".join(text), encoding="utf-8")
    run = tmp_path / "run"
    args = ["train", "tag", "--train", str(data), "--out", str(run), "--char-encoder", "cnn", "--cell", "gru"]
    assert main([*args, *fast(epochs=2)]) == 0
    assert main([*args, *fast(epochs=3), "--resume"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["token_accuracy"] > 0.9 and figures["f1"] == figures["token_accuracy"]
    assert set(figures["per_type"]) == {"DET", "NOUN", "VERB"}
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.options.char_encoder == "cnn" and cfg.model.cell == "gru"


@pytest.mark.parametrize("text, extra, message", [
    ("EU\tB-ORG\nrejects\n", [], r"bad\.conll: line 2: found 1 column"),
    ("a\tB-PER\nb\tO\nc\tI-PER\n", [], r"bad\.conll: line 3: tag 'I-PER' follows 'O'; under BIO"),
    ("a\tB-PER\nb\tO\n", ["--scheme", "iob1"], r"bad\.conll: line 1: tag 'B-PER' starts the sentence; under IOB1"),
    ("", [], r"bad\.conll: the file is empty"),
    ("a\tNOUN\n", ["--scheme", "bio"], r"not entity tags"),
])
def test_bad_input_gives_one_line_errors(tmp_path, capsys, text, extra, message):
    bad = tmp_path / "bad.conll"
    bad.write_text(text, encoding="utf-8")
    assert main(["train", "tag", "--train", str(bad), "--valid", str(bad), "--out", str(tmp_path / "r"), *fast(),
                 *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnkit: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_repair_option_trains_on_repaired_tags(tmp_path, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("a\tO\nb\tI-PER\n\nc\tB-LOC\n", encoding="utf-8")
    assert main(["train", "tag", "--train", str(bad), "--valid", str(bad), "--out", str(tmp_path / "r"), *fast(1),
                 "--repair"]) == 0
    assert "1 sentence(s) with tags invalid under BIO were repaired" in capsys.readouterr().err


def test_predict_refuses_an_unknown_format(tmp_path):
    train = ner_file(tmp_path / "train.conll", 10, 0)
    run = tmp_path / "run"
    assert main(["train", "tag", "--train", str(train), "--out", str(run), *fast(1)]) == 0
    with pytest.raises(UserError, match="--format xml"):
        runner.predict(run, train, tmp_path / "o.txt", format="xml")

"""Pre-trained word vectors: text formats, filtering, lower-case fallback, and clear errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from rnnkit.config import UserError
from rnnkit.data.vectors import embedding_matrix, read_vectors


def test_glove_and_word2vec_formats_read_alike(tmp_path):
    glove = tmp_path / "g.txt"
    glove.write_text("the 0.1 0.2 0.3\ncat 1 2 3\nDog -1 0 1\n", encoding="utf-8")
    w2v = tmp_path / "w.txt.gz"
    with gzip.open(w2v, "wt", encoding="utf-8") as fh:
        fh.write("3 3\nthe 0.1 0.2 0.3\ncat 1 2 3\nDog -1 0 1\n")
    a, da = read_vectors(glove)
    b, db = read_vectors(w2v)
    assert da == db == 3 and a.keys() == b.keys() == {"the", "cat", "Dog"}
    np.testing.assert_allclose(a["cat"], [1, 2, 3])
    only, _ = read_vectors(glove, ["cat", "fish"])
    assert set(only) == {"cat"}


def test_embedding_matrix_uses_the_lower_case_form_and_keeps_specials(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("cat 1 2\ndog 3 4\n", encoding="utf-8")
    vectors, dim = read_vectors(path)
    base = np.zeros((4, 2), dtype=np.float32)
    matrix, found = embedding_matrix(["<pad>", "Cat", "dog", "emu"], vectors, dim, base=base, skip=1)
    assert found == 2
    np.testing.assert_allclose(matrix, [[0, 0], [1, 2], [3, 4], [0, 0]])


@pytest.mark.parametrize(("text", "message"), [
    ("cat 1 2\ndog 3\n", "line 2: 1 numbers; the file's vectors have 2"),
    ("cat 1 x\n", "line 1: expected numbers after 'cat'"),
    ("", "no vectors"),
])
def test_bad_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "v.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_vectors(path)


def test_size_mismatch_names_the_option(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("cat 1 2\n", encoding="utf-8")
    vectors, dim = read_vectors(path)
    with pytest.raises(UserError, match="--embed 2"):
        embedding_matrix(["cat"], vectors, dim, base=np.zeros((1, 5), dtype=np.float32))


def test_classifier_starts_from_the_vectors(tmp_path):
    import torch

    from rnnkit.cli import main
    from rnnkit.tasks import runner

    (tmp_path / "v.txt").write_text("good " + " ".join(["0.5"] * 8) + "\nbad " + " ".join(["-0.5"] * 8)
                                    + "\ngreat " + " ".join(["0.25"] * 8) + "\n", encoding="utf-8")
    rows = ["text,label"] + [f"a {w} film,{w}" for w in ["good", "bad"] * 20]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    base = ["train", "classify", "--train", str(tmp_path / "c.csv"), "--hidden", "8", "--layers", "1",
            "--epochs", "1", "--lr", "1e-9", "--embeddings", str(tmp_path / "v.txt"), "--threads", "1"]
    assert main([*base, "--embed", "8", "--out", str(tmp_path / "run")]) == 0
    run = runner.load(tmp_path / "run", task="classify")
    good = run.tokenizer.encode("good")[0]
    torch.testing.assert_close(run.model.embedding.weight[good], torch.full((8,), 0.5), atol=1e-4, rtol=0)
    # A word only the vectors file knows joins the vocabulary with its vector.
    great = run.tokenizer.encode("great")[0]
    assert great >= 4
    torch.testing.assert_close(run.model.embedding.weight[great], torch.full((8,), 0.25), atol=1e-4, rtol=0)
    assert main([*base, "--embed", "5", "--out", str(tmp_path / "run2")]) == 2
    assert not (tmp_path / "run2").exists()


def test_tagger_starts_from_the_vectors(tmp_path):
    import torch

    from rnnkit.cli import main
    from rnnkit.tasks import runner

    (tmp_path / "v.txt").write_text("paris " + " ".join(["0.5"] * 6) + "\nlondon " + " ".join(["-0.5"] * 6) + "\n",
                                    encoding="utf-8")
    sentence = "Anna\tB-PER\nmet\tO\nPaul\tB-PER\nin\tO\nParis\tB-LOC\n"
    (tmp_path / "t.conll").write_text("\n".join([sentence] * 20), encoding="utf-8")
    assert main(["train", "tag", "--train", str(tmp_path / "t.conll"), "--out", str(tmp_path / "run"), "--embed", "6",
                 "--hidden", "8", "--char-hidden", "4", "--epochs", "1", "--lr", "1e-9", "--threads", "1",
                 "--embeddings", str(tmp_path / "v.txt")]) == 0
    run = runner.load(tmp_path / "run")
    words = run.vocab.words
    assert "london" in words  # only the vectors file knows it
    torch.testing.assert_close(run.model.embedding.weight[words.index("paris")], torch.full((6,), 0.5),
                               atol=1e-4, rtol=0)

"""CoNLL and CoNLL-U reading, tag schemes (detect, validate, convert, repair) and the raw-text tokenizer."""

import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from rnnkit.config import UserError
from rnnkit.data.conll import (
    convert,
    detect_scheme,
    entity_spans,
    find_invalid,
    looks_like_conll,
    prepare_tags,
    read_conll,
    tokenize,
)

CONLL = """-DOCSTART- -X- O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
-DOCSTART- -X- O O
call NN I-NP O
\t
Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
\x20\x20\x20

"""

CONLLU = """# sent_id = 1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_

# sent_id = 2
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conll_columns_docstart_anywhere_and_whitespace_separators(tmp_path):
    sentences = read_conll(write(tmp_path, "a.txt", CONLL))
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    assert sentences[0].lines == [3, 4, 5, 7] and sentences[1].lines == [9, 10]


def test_tab_separated_tokens_keep_inner_spaces(tmp_path):
    sentences = read_conll(write(tmp_path, "a.conll", "New York\tB-LOC\nis\tO\n"))
    assert sentences[0].tokens == ["New York", "is"]


@pytest.mark.parametrize("column, tags", [("upos", ["PRON", "AUX", "PART", "VERB"]),
                                          ("xpos", ["PRP", "MD", "RB", "VB"]),
                                          ("deprel", ["nsubj", "aux", "advmod", "root"])])
def test_conllu_columns_skip_comments_ranges_and_empty_nodes(tmp_path, column, tags):
    sentences = read_conll(write(tmp_path, "a.conllu", CONLLU), column=column)
    assert sentences[0].tokens == ["I", "ca", "n't", "go"]
    assert sentences[0].tags == tags
    assert sentences[1].tokens == ["Hi"]


def test_conllu_is_recognised_without_its_suffix(tmp_path):
    assert read_conll(write(tmp_path, "a.txt", CONLLU))[1].tags == ["INTJ"]


def test_one_column_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.conll", "EU\tB-ORG\nrejects\n")
    with pytest.raises(UserError, match=r"bad\.conll: line 2: found 1 column \('rejects'\)"):
        read_conll(path)
    assert read_conll(path, require_tags=False)[0].tags is None


@pytest.mark.parametrize("text, message", [("", "empty"), ("  \n\n", "empty"), ("-DOCSTART- O\n\n", "no sentences"),
                                           ("1\tI\tI\tPRON\n", None)])
def test_empty_and_malformed_files(tmp_path, text, message):
    path = write(tmp_path, "x.conllu" if message is None else "x.conll", text)
    with pytest.raises(UserError, match=message or r"line 1: found 4 tab-separated column\(s\)"):
        read_conll(path)


def test_conllu_without_the_chosen_column(tmp_path):
    path = write(tmp_path, "a.conllu", "1\tI\tI\tPRON\t_\t_\t0\troot\t_\t_\n")
    with pytest.raises(UserError, match=r"line 1: column XPOS is empty"):
        read_conll(path, column="xpos")


def test_detect_scheme():
    assert detect_scheme([["O", "B-PER", "I-PER"]]) == "bio"
    assert detect_scheme([["O", "B-PER", "E-PER", "S-LOC"]]) == "bioes"
    assert detect_scheme([["NOUN", "VERB"], ["O"]]) == "none"
    assert detect_scheme([["O", "-LRB-"]]) == "none"
    # IOB1: I- opens, B- only between two adjacent entities of one type.
    assert detect_scheme([["I-ORG", "O", "I-PER", "I-PER", "B-PER"], ["O", "I-LOC"]]) == "iob1"
    assert detect_scheme([["O", "I-PER", "I-PER"]]) == "iob1"
    # A B- that opens an entity makes it BIO (and an I- after O is then an error to repair).
    assert detect_scheme([["O", "I-PER"], ["B-LOC"]]) == "bio"
    assert detect_scheme([["B-PER", "I-PER"]]) == "bio"


def test_find_invalid():
    assert find_invalid(["B-PER", "I-PER", "O", "B-LOC"], "bio") is None
    assert find_invalid(["O", "I-PER"], "bio")[0] == 1
    assert find_invalid(["B-LOC", "I-PER"], "bio")[0] == 1
    assert find_invalid(["I-PER"], "bio")[1].startswith("tag 'I-PER' starts the sentence")
    assert find_invalid(["B-PER", "E-PER", "S-LOC", "O"], "bioes") is None
    assert find_invalid(["B-PER", "O"], "bioes")[0] == 1
    assert find_invalid(["O", "B-PER"], "bioes")[0] == 1
    assert find_invalid(["S-PER", "E-PER"], "bioes")[0] == 1
    assert find_invalid(["B-PER", "E-PER"], "bio")[1].startswith("tag 'E-PER' has a prefix")


def test_find_invalid_iob1():
    assert find_invalid(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "iob1") is None
    assert find_invalid(["I-PER", "B-LOC"], "iob1")[0] == 1
    at, reason = find_invalid(["O", "B-PER"], "iob1")
    assert at == 1 and reason.startswith("tag 'B-PER' follows 'O'; under IOB1 an entity begins with I-PER")


def test_iob1_conversion_round_trips():
    assert convert(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "bio") == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert convert(["B-PER", "B-PER", "B-LOC", "I-LOC"], "iob1") == ["I-PER", "B-PER", "I-LOC", "I-LOC"]
    rng = random.Random(2)
    for _ in range(300):
        bio = convert(random_tags(rng, rng.randint(1, 8)), "bio")
        iob1 = convert(bio, "iob1")
        assert find_invalid(iob1, "iob1") is None
        assert entity_spans(iob1) == entity_spans(bio)
        assert convert(iob1, "bio") == bio


def test_prepare_tags_reads_iob1_into_bio(tmp_path):
    # As the CoNLL-2003 release writes it: the sentence opens with I-ORG.
    path = write(tmp_path, "a.conll", "EU I-ORG\nrejects O\nGerman I-MISC\n\nPeter I-PER\nBlackburn I-PER\nJohn B-PER\n")
    sentences, scheme, repaired, found = prepare_tags(read_conll(path), "auto", False, str(path))
    assert (scheme, repaired, found) == ("bio", 0, "iob1")
    assert sentences[0].tags == ["B-ORG", "O", "B-MISC"] and sentences[1].tags == ["B-PER", "I-PER", "B-PER"]
    as_bioes, scheme, _, found = prepare_tags(read_conll(path), "bioes", False, str(path))
    assert (scheme, found) == ("bioes", "iob1") and as_bioes[1].tags == ["B-PER", "E-PER", "S-PER"]
    # Declared IOB1: a B- that opens an entity is an error naming the line, or repaired.
    bad = write(tmp_path, "b.conll", "a B-PER\nb O\n")
    with pytest.raises(UserError, match=r"b\.conll: line 1: tag 'B-PER' starts the sentence; under IOB1"):
        prepare_tags(read_conll(bad), "iob1", False, str(bad))
    fixed, scheme, repaired, found = prepare_tags(read_conll(bad), "iob1", True, str(bad))
    assert (scheme, repaired, found) == ("bio", 1, "iob1") and fixed[0].tags == ["B-PER", "O"]
    with pytest.raises(UserError, match=r"--scheme iob1: found 'S-PER'"):
        prepare_tags(read_conll(write(tmp_path, "c.conll", "a S-PER\n")), "iob1", False, "c.conll")


def random_tags(rng, n, prefixes="BIO"):
    return [t if t == "O" else f"{t}-{rng.choice(['PER', 'LOC'])}" for t in rng.choices(prefixes, k=n)]


def test_entity_spans_match_seqeval_on_random_sequences():
    # seqeval's default mode reproduces conlleval; invalid sequences included.
    rng = random.Random(0)
    for _ in range(500):
        tags = random_tags(rng, rng.randint(1, 9), "BIESO")
        ours = sorted(entity_spans(tags))
        ref = sorted((k, s, e + 1) for k, s, e in get_entities(tags))
        assert ours == ref, tags


@pytest.mark.parametrize(
    "tags,spans",
    [
        ([], []),
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        (["O", "I-PER", "I-PER"], [("PER", 1, 3)]),  # an I- after O begins an entity
        (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),  # a change of type ends one, begins another
        (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
        (["S-PER", "B-LOC", "E-LOC", "O"], [("PER", 0, 1), ("LOC", 1, 3)]),
        (["E-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # an E- closes; what follows begins anew
        (["B-PER", "E-PER", "I-PER"], [("PER", 0, 2), ("PER", 2, 3)]),
        (["I-PER", "S-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
        (["B-ORG-X", "I-ORG-X"], [("ORG-X", 0, 2)]),  # the type is all after the first hyphen
        # Tags that are not X-TYPE count as O.
        (["NOUN", "B-PER", "-LRB-", "I-PER"], [("PER", 1, 2), ("PER", 3, 4)]),
        (["B-", "I-PER", "X", "I-PER"], [("PER", 1, 2), ("PER", 3, 4)]),
    ],
)
def test_entity_spans_read_as_conlleval(tags, spans):
    assert entity_spans(tags) == spans


def test_conversion_round_trips_and_keeps_entities():
    rng = random.Random(1)
    for _ in range(300):
        tags = convert(random_tags(rng, rng.randint(1, 8)), "bio")  # a valid BIO sequence
        bioes = convert(tags, "bioes")
        assert find_invalid(tags, "bio") is None and find_invalid(bioes, "bioes") is None
        assert convert(bioes, "bio") == tags
        assert entity_spans(bioes) == entity_spans(tags)
    assert convert(["B-PER", "I-PER", "O", "B-LOC"], "bioes") == ["B-PER", "E-PER", "O", "S-LOC"]


def test_prepare_tags_rejects_or_repairs_invalid_sequences(tmp_path):
    path = write(tmp_path, "a.conll", "a O\nb I-PER\nc I-PER\n\nd B-LOC\n")
    sentences = read_conll(path)
    with pytest.raises(UserError, match=r"a\.conll: line 2: tag 'I-PER' follows 'O'.*--repair"):
        prepare_tags(sentences, "auto", False, str(path))
    fixed, scheme, repaired, _ = prepare_tags(sentences, "auto", True, str(path))
    assert scheme == "bio" and repaired == 1 and fixed[0].tags == ["O", "B-PER", "I-PER"]
    converted, scheme, _, _ = prepare_tags(fixed, "bioes", False, str(path))
    assert scheme == "bioes" and converted[0].tags == ["O", "B-PER", "E-PER"] and converted[1].tags == ["S-LOC"]
    with pytest.raises(UserError, match="not entity tags"):
        prepare_tags(read_conll(write(tmp_path, "p.conll", "a NOUN\n")), "bio", False, "p.conll")
    plain, scheme, _, _ = prepare_tags(read_conll(tmp_path / "p.conll"), "auto", False, "p.conll")
    assert scheme == "none" and plain[0].tags == ["NOUN"]


def test_tokenize_keeps_offsets():
    text = "@bob: don't miss #rnn at https://x.io/a?b=1, U.S. 3.5 km!"
    pieces = tokenize(text)
    assert [p[0] for p in pieces] == ["@bob", ":", "don't", "miss", "#rnn", "at", "https://x.io/a?b=1,", "U.S", ".",
                                      "3.5", "km", "!"]
    assert all(text[a:b] == tok for tok, a, b in pieces)


def test_looks_like_conll():
    assert looks_like_conll("a\tO\n", "x.txt")
    assert looks_like_conll("-DOCSTART- O\n\nEU B-ORG\n", "x.txt")
    assert looks_like_conll("Hello\n", "x.conll")
    assert not looks_like_conll("Hello world.\nSecond line\n", "x.txt")

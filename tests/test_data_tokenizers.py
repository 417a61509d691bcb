"""Tests for rnnkit.data.tokenizers: round trips, word rules, save/load, unknowns, boundaries."""

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer

from rnnkit.config import UserError
from rnnkit.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TOKENIZER_FILE,
    UNK_ID,
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)

CORPUS = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Don't panic! The dog's owner said: \"it's fine\" (mostly).\n"
    "\n"
    "Unicode: café, naïve, 日本語, emoji 🙂 and tabs\there.\n"
) * 5

OPTIONS = {"char": {}, "word": {}, "bpe": {"vocab_size": 320}}


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.fit(CORPUS, vocab_size=320)


@pytest.mark.parametrize(
    "text",
    ["The dog.", "café 日本語 🙂\n\n\tend\n", "", "\n", "Don't panic!  (two  spaces)"],
)
def test_char_round_trip_is_exact(text):
    tok = CharTokenizer.fit(CORPUS + "()")
    ids = tok.encode(text)
    assert UNK_ID not in ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_vocabulary_is_specials_then_sorted_characters():
    tok = CharTokenizer.fit("cabba\n")
    assert tok.tokens == ["<pad>", "<unk>", "<bos>", "<eos>", "\n", "a", "b", "c"]
    assert tok.vocab_size == 8
    assert tok.encode("abc\n") == [5, 6, 7, 4]


def test_char_unknown_and_specials_in_decode():
    tok = CharTokenizer.fit("abc")
    ids = tok.encode("axb")
    assert ids == [tok.encode("a")[0], UNK_ID, tok.encode("b")[0]]
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID]) == "a?b"
    assert tok.unknown_symbols("xaxyzb<") == ["x", "y", "z", "<"]


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox.",
        "café, naïve, 日本語 🙂\n\n\tand \r\n windows",
        "totally unseen: Ωμέγα ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x7f",
        "literal specials <unk> <pad> <bos> <eos> stay text",
        "   leading and trailing spaces   ",
        "",
    ],
)
def test_bpe_round_trip_is_exact_and_never_unknown(bpe, text):
    ids = bpe.encode(text)
    assert all(i > EOS_ID for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.unknown_symbols(text) == []


def test_bpe_specials_at_fixed_ids_and_merges_learned(bpe):
    for i, name in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"]):
        assert bpe.token_text(i) == name
    assert 260 < bpe.vocab_size <= 320
    # Merges make common text shorter than its byte count.
    assert len(bpe.encode("The quick brown fox")) < len("The quick brown fox")
    assert bpe.decode([BOS_ID, *bpe.encode("dog"), EOS_ID, PAD_ID]) == "dog"


def test_bpe_single_tokens_decode_like_the_library(bpe, tmp_path):
    saved = json.loads(bpe.save(tmp_path).read_text(encoding="utf-8"))
    library = HFTokenizer.from_str(json.dumps(saved["library"]))
    for i in range(4, bpe.vocab_size):
        assert bpe.decode([i]) == library.decode([i]), i


def test_bpe_rejects_tiny_vocab():
    with pytest.raises(UserError, match="vocab_size"):
        BPETokenizer.fit(CORPUS, vocab_size=100)


def test_word_splits_punctuation_newlines_and_apostrophes():
    assert WordTokenizer.split("Don't stop, Bob's cat!\n\nEnd.") == [
        "Don't", "stop", ",", "Bob's", "cat", "!", "\n", "\n", "End", ".",
    ]
    # Whitespace other than "\n" separates only; clitics split off by the corpus stay one token.
    assert WordTokenizer.split("a\t b  the dog 's did n't") == ["a", "b", "the", "dog", "'s", "did", "n't"]
    assert WordTokenizer.split("naïve 日本語 café") == ["naïve", "日本語", "café"]


def test_word_unk_literal_maps_to_unk_id():
    tok = WordTokenizer.fit("the <unk> sat on the <unk> mat")
    assert "<" not in tok.tokens and "unk" not in tok.tokens and ">" not in tok.tokens
    ids = tok.encode("the <unk> mat")
    assert ids[1] == UNK_ID
    assert ids[0] != UNK_ID and ids[2] != UNK_ID
    assert tok.decode(ids) == "the <unk> mat"
    assert tok.unknown_symbols("the <unk> zebra mat zebra yak") == ["zebra", "yak"]


def test_word_decode_is_readable():
    tok = WordTokenizer.fit(CORPUS)
    text = 'The dog\'s owner said: "it\'s fine" (mostly).\nDon\'t panic!'
    decoded = tok.decode(tok.encode(text))
    assert decoded == text  # quotes, brackets, clitics and closing punctuation placed as written


@pytest.mark.parametrize("text", [
    "Er sagte: „Hallo, wie geht es?“ und ging.",
    "Schick mir eine E-Mail und/oder ruf an.",
    "Das kostet 1.000 Euro um 10:30 Uhr.",
    "¿Qué? “Quoted” text, 3,5% and $5.",
    "A dash – spaced – stays spaced, and so do \"two\" \"quotes\".",
])
def test_word_decode_restores_common_spacing(text):
    tok = WordTokenizer.fit(text)
    assert tok.decode(tok.encode(text)) == text
    split_corpus = WordTokenizer.fit("the dog 's bone did n't move .\n")
    assert split_corpus.decode(split_corpus.encode("the dog 's bone did n't move .\n")) == (
        "the dog's bone didn't move.\n"
    )


def test_word_min_freq_and_max_vocab():
    text = "a a a a b b b c c d e e"
    tok = WordTokenizer.fit(text, min_freq=2)
    assert tok.tokens[4:] == ["a", "b", "c", "e"]  # by count, ties alphabetical
    assert tok.encode("d a") == [UNK_ID, tok.tokens.index("a")]
    capped = WordTokenizer.fit(text, max_vocab=6)
    assert capped.vocab_size == 6
    assert capped.tokens[4:] == ["a", "b"]
    assert capped.encode("c e d") == [UNK_ID] * 3
    assert capped.unknown_symbols(text) == ["c", "d", "e"]
    tie = WordTokenizer.fit("z y x", max_vocab=6)
    assert tie.tokens[4:] == ["x", "y"]


@pytest.mark.parametrize(("option", "value"), [("min_freq", 0), ("max_vocab", 4), ("max_vocab", 2.5)])
def test_word_rejects_bad_options(option, value):
    with pytest.raises(UserError, match=option):
        WordTokenizer.fit("a b c", **{option: value})


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_save_load_gives_identical_encodings(tmp_path, kind):
    tok = build_tokenizer(kind, CORPUS, **OPTIONS[kind])
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / TOKENIZER_FILE
    assert sorted(p.name for p in path.parent.iterdir()) == [TOKENIZER_FILE]
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tok) and loaded.kind == kind
    assert loaded.vocab_size == tok.vocab_size
    probe = CORPUS + "unseen zebra Ω <unk> <eos>"
    assert loaded.encode(probe) == tok.encode(probe)
    ids = tok.encode(probe)
    assert loaded.decode(ids) == tok.decode(ids)
    assert [loaded.token_text(i) for i in range(tok.vocab_size)] == [
        tok.token_text(i) for i in range(tok.vocab_size)
    ]


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_fitting_is_deterministic(kind):
    a = build_tokenizer(kind, CORPUS, **OPTIONS[kind])
    b = build_tokenizer(kind, CORPUS, **OPTIONS[kind])
    assert [a.token_text(i) for i in range(a.vocab_size)] == [b.token_text(i) for i in range(b.vocab_size)]
    assert a.encode(CORPUS) == b.encode(CORPUS)


def test_build_tokenizer_errors():
    with pytest.raises(UserError, match="'sentencepiece'.*char, word, space, bpe"):
        build_tokenizer("sentencepiece", CORPUS)
    with pytest.raises(UserError, match="unknown option.*vocab_size"):
        build_tokenizer("word", CORPUS, vocab_size=10)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match=f"{TOKENIZER_FILE}: no such file"):
        load_tokenizer(tmp_path)
    path = tmp_path / TOKENIZER_FILE
    path.write_text('{"format": "rnnkit-tokenizer", ', encoding="utf-8")
    with pytest.raises(UserError, match=r"tokenizer\.json: invalid JSON at line 1"):
        load_tokenizer(tmp_path)
    path.write_text('{"format": "rnnkit-tokenizer", "version": 1, "kind": "morse"}', encoding="utf-8")
    with pytest.raises(UserError, match="kind 'morse'"):
        load_tokenizer(tmp_path)
    bad_specials = {"format": "rnnkit-tokenizer", "version": 1, "kind": "char", "tokens": ["a", "b"]}
    path.write_text(json.dumps(bad_specials), encoding="utf-8")
    with pytest.raises(UserError, match="expected the special tokens"):
        load_tokenizer(tmp_path)
    path.write_text(json.dumps({"format": "other"}), encoding="utf-8")
    with pytest.raises(UserError, match="not an rnnkit tokenizer"):
        load_tokenizer(tmp_path)


def test_is_boundary_char():
    tok = CharTokenizer.fit("ab c.\n,é")
    expected = {" ": True, "\n": True, ".": True, ",": True, "a": False, "b": False, "é": False}
    for char, boundary in expected.items():
        assert tok.is_boundary(tok.encode(char)[0]) is boundary, char
    assert all(tok.is_boundary(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID))


def test_is_boundary_word():
    tok = WordTokenizer.fit("the dog 's tail did n't wag .\n")
    assert tok.is_boundary(tok.encode("dog")[0])
    assert tok.is_boundary(tok.encode(".")[0])
    assert tok.is_boundary(tok.encode("\n")[0])
    assert not tok.is_boundary(tok.encode("'s")[0])
    assert not tok.is_boundary(tok.encode("n't")[0])
    assert all(tok.is_boundary(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID))


def test_is_boundary_bpe(bpe):
    texts = {bpe.token_text(i): i for i in range(bpe.vocab_size)}
    assert bpe.is_boundary(texts[" The"]) and bpe.is_boundary(texts["\n"]) and bpe.is_boundary(texts["."])
    assert not bpe.is_boundary(texts["The"]) and not bpe.is_boundary(texts["T"])
    # Every token is classified by its surface text: leading whitespace, or punctuation only.
    for text, i in texts.items():
        if i > EOS_ID and text and text[0].isspace():
            assert bpe.is_boundary(i), repr(text)
        if i > EOS_ID and text.isalpha():
            assert not bpe.is_boundary(i), repr(text)
    # "Ж" is unseen, so it stays two byte tokens: a lead byte and a continuation byte, neither ends a word.
    lead, cont = bpe.encode("Ж")
    assert not bpe.is_boundary(lead) and not bpe.is_boundary(cont)
    assert bpe.is_boundary(bpe.encode(" Ж")[0])


def test_space_tokenizer_keeps_the_corpus_tokenisation(tmp_path):
    from rnnkit.data import SpaceTokenizer, load_tokenizer

    text = " = Valkyria Chronicles III = \n\n The game @-@ play 's <unk> was 1 @,@ 000 .\n"
    tok = SpaceTokenizer.fit(text)
    ids = tok.encode(text)
    # one token per space-separated word and one per line end, as WikiText-2 counts them
    assert len(ids) == sum(len(line.split()) + 1 for line in text.split("\n")[:-1])
    assert tok.token_text(ids[0]) == "="
    assert ids.count(tok.encode("\n")[0]) == 3
    assert tok.encode("<unk>") == [1]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.kind == "space" and again.encode(text) == ids
    assert tok.decode(ids).split() == text.split()

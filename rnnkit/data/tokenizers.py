"""Character, word and byte-level BPE tokenizers behind one interface, with saving and loading.

What is here: the `Tokenizer` base class, `CharTokenizer`, `WordTokenizer`, `BPETokenizer` (through the
`tokenizers` library), `build_tokenizer`, `load_tokenizer` and the special token ids shared by all
three kinds (`<pad>`=0, `<unk>`=1, `<bos>`=2, `<eos>`=3). What is not: batching token ids (batching.py)
and reading corpora (text.py).

A saved tokenizer is one `tokenizer.json`: {"format": "rnnkit-tokenizer", "version": 1, "kind": ...}
plus the token list (char, word) or the `tokenizers` library's own JSON under "library" (bpe).
"""

from __future__ import annotations

import inspect
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from rnnkit.config import UserError
from rnnkit.io import atomic_write_text

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
TOKENIZER_FILE = "tokenizer.json"
_FORMAT = "rnnkit-tokenizer"
_VERSION = 1


def _is_punct(char: str) -> bool:
    """Unicode punctuation (P*) or symbol (S*): characters that never continue a word."""
    return unicodedata.category(char)[0] in "PS"


def _starts_new_word(text: str) -> bool:
    """True when a token with this surface text ends the word before it."""
    if not text:
        return False
    return text[0].isspace() or all(_is_punct(c) or c.isspace() for c in text)


class Tokenizer:
    """Common interface: text to ids and back, with the four special tokens at ids 0-3."""

    kind: str = ""

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (V)."""
        raise NotImplementedError

    @classmethod
    def fit(cls, text: str, **options: Any) -> Tokenizer:
        """Build the vocabulary from a training text."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Map text to token ids (no `<bos>`/`<eos>` added)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to text; `<pad>`, `<bos>`, `<eos>` are dropped, `<unk>` is rendered per kind."""
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        """The surface text of one token; specials give their names, e.g. "<unk>"."""
        raise NotImplementedError

    def unknown_symbols(self, text: str) -> list[str]:
        """Distinct symbols of `text` that would map to `<unk>`, in order of first appearance."""
        raise NotImplementedError

    def is_boundary(self, token_id: int) -> bool:
        """True when emitting this token means the current word has ended.

        That is: a special token, or surface text starting with whitespace (newline included), or made
        only of punctuation/symbols.
        """
        self._check_id(token_id)
        if token_id < len(SPECIAL_TOKENS):
            return True
        return _starts_new_word(self.token_text(token_id))

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` atomically into `directory` (created if missing).

        Returns:
            The path of the written file.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FORMAT, "version": _VERSION, "kind": self.kind, **self._state()}
        return atomic_write_text(folder / TOKENIZER_FILE, json.dumps(payload, ensure_ascii=False, indent=1))

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, state: dict[str, Any], path: Path) -> Tokenizer:
        raise NotImplementedError

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range for vocabulary size {self.vocab_size}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class _ListTokenizer(Tokenizer):
    """Shared code for tokenizers whose vocabulary is a plain list of token strings."""

    unk_text = "<unk>"

    def __init__(self, tokens: list[str]):
        assert tuple(tokens[: len(SPECIAL_TOKENS)]) == SPECIAL_TOKENS
        self._tokens = list(tokens)
        self._index = {tok: i for i, tok in enumerate(self._tokens)}
        # Text never encodes to a special id; the literal "<unk>" is handled by each kind on its own.
        for name in SPECIAL_TOKENS:
            del self._index[name]

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[str]:
        """The vocabulary, index = id."""
        return list(self._tokens)

    def token_text(self, token_id: int) -> str:
        self._check_id(token_id)
        return self._tokens[token_id]

    def _surface(self, token_id: int) -> str | None:
        """Decoded text of one id, or None for dropped specials."""
        self._check_id(token_id)
        if token_id == UNK_ID:
            return self.unk_text
        if token_id < len(SPECIAL_TOKENS):
            return None
        return self._tokens[token_id]

    def _state(self) -> dict[str, Any]:
        return {"tokens": self._tokens}

    @classmethod
    def _tokens_from_state(cls, state: dict[str, Any], path: Path) -> list[str]:
        tokens = state.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise UserError(f"{path}: 'tokens' is missing or not a list of strings (expected the vocabulary)")
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise UserError(
                f"{path}: the vocabulary starts with {tokens[: len(SPECIAL_TOKENS)]}; "
                f"expected the special tokens {list(SPECIAL_TOKENS)}"
            )
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, n in Counter(tokens).items() if n > 1)
            raise UserError(f"{path}: token {dup!r} appears more than once (expected distinct tokens)")
        return tokens


class CharTokenizer(_ListTokenizer):
    """One token per Unicode character; `decode` is the exact inverse of `encode` for seen characters.

    An unseen character encodes to `<unk>`, which decodes to "?" (a readable placeholder, not U+FFFD).
    """

    kind = "char"
    unk_text = "?"

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        """Vocabulary = the four specials + the sorted distinct characters of `text`."""
        if not text:
            raise UserError("char tokenizer: the training text is empty (expected some text to fit on)")
        return cls(list(SPECIAL_TOKENS) + sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        index = self._index
        return [index.get(c, UNK_ID) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(s for s in map(self._surface, ids) if s is not None)

    def unknown_symbols(self, text: str) -> list[str]:
        return list(dict.fromkeys(c for c in text if c not in self._index))

    @classmethod
    def _from_state(cls, state: dict[str, Any], path: Path) -> CharTokenizer:
        tokens = cls._tokens_from_state(state, path)
        bad = next((t for t in tokens[len(SPECIAL_TOKENS) :] if len(t) != 1), None)
        if bad is not None:
            raise UserError(f"{path}: char token {bad!r} is not a single character (expected one each)")
        return cls(tokens)


# The literal "<unk>" (as WikiText-2 writes it), then words with inner apostrophes ("don't"),
# English clitics split off by the corpus ("'s", "'re"), the newline, and any single other symbol.
_WORD_RE = re.compile(r"<unk>|\w+(?:['’]\w+)*|['’](?:s|re|ve|ll|d|m|t)\b|\n|[^\w\s]", re.IGNORECASE)
_NO_SPACE_BEFORE = frozenset(".,;:!?)]}%…")
_NO_SPACE_AFTER = frozenset("([{")
_OPENING = frozenset("„«‹¿¡‘$")  # written against the word after them
_CLOSING = frozenset("»›”’")  # written against the word before them
_JOINERS = frozenset("-/")  # inside a word when words stand on both sides
_NUMBER_SEPARATORS = frozenset(".,:")  # inside a number when digits stand on both sides


def _opened(tokens: list[str], i: int) -> bool:
    """Whether the quote at tokens[i] ('"' or '“') opens a quotation (counting the quotes before it)."""
    token = tokens[i]
    if token == '"':
        return tokens[:i].count('"') % 2 == 0
    # “ opens in English and closes a German „
    return tokens[:i].count("„") <= tokens[:i].count("“")


def _is_clitic(token: str) -> bool:
    """A word part the corpus split off and that belongs to the word before: "'s", "'re", "n't"."""
    return len(token) > 1 and (token[0] in "'’" or token.lower() in ("n't", "n’t"))


def _attaches_left(token: str) -> bool:
    """Tokens written without a space before them: closing punctuation and clitics."""
    return token in _NO_SPACE_BEFORE or _is_clitic(token)


class WordTokenizer(_ListTokenizer):
    """Words (`\\w+` runs with inner apostrophes), single punctuation characters and "\\n" as tokens.

    Other whitespace only separates tokens, so `decode` is a readable detokenisation (single spaces,
    none around "\\n", none before closing punctuation or clitics), not an exact inverse of `encode`.
    The literal text "<unk>" maps to `<unk>`, which decodes to "<unk>".
    """

    kind = "word"

    def __init__(self, tokens: list[str], min_freq: int = 1, max_vocab: int | None = None):
        super().__init__(tokens)
        self.min_freq = min_freq
        self.max_vocab = max_vocab

    @staticmethod
    def split(text: str) -> list[str]:
        """Split text into word-level token strings (before vocabulary lookup)."""
        return _WORD_RE.findall(text)

    @classmethod
    def fit(cls, text: str, min_freq: int = 1, max_vocab: int | None = None) -> WordTokenizer:
        """Keep tokens seen at least `min_freq` times, the most frequent first, ties alphabetical.

        Args:
            text: training text.
            min_freq: minimum count for a token to get its own id.
            max_vocab: cap on `vocab_size`, the four specials included; None for no cap.
        """
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise UserError(f"word tokenizer min_freq: found {min_freq!r}; expected an integer >= 1")
        if max_vocab is not None and (
            isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab <= len(SPECIAL_TOKENS)
        ):
            raise UserError(
                f"word tokenizer max_vocab: found {max_vocab!r}; expected None or an integer > "
                f"{len(SPECIAL_TOKENS)} (the four special tokens count towards it)"
            )
        counts = Counter(t for t in cls.split(text) if t != "<unk>")
        if not counts:
            raise UserError("word tokenizer: the training text has no tokens (expected some words)")
        kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_vocab is not None:
            kept = kept[: max_vocab - len(SPECIAL_TOKENS)]
        return cls(list(SPECIAL_TOKENS) + kept, min_freq=min_freq, max_vocab=max_vocab)

    def encode(self, text: str) -> list[int]:
        index = self._index
        return [index.get(t, UNK_ID) for t in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        tokens = [t for t in map(self._surface, ids) if t is not None]
        parts: list[str] = []
        open_quote = False  # inside a pair of straight double quotes
        german = False  # a „ is waiting for its closing “
        for i, token in enumerate(tokens):
            prev = tokens[i - 1] if i > 0 else None
            if token == '"':
                opening = not open_quote
                open_quote = not open_quote
            else:
                opening = token in _OPENING or (token == "“" and not german)
            if token == "„":
                german = True
            elif token == "“" and german:
                german = False
            if prev is not None and prev != "\n" and token != "\n" and self._spaced(tokens, i, opening):
                parts.append(" ")
            parts.append(token)
        return "".join(parts)

    @staticmethod
    def _spaced(tokens: list[str], i: int, opening: bool) -> bool:
        """Whether a space goes before tokens[i] (same line): the usual rules of written text.

        None after an opening bracket or quote, before closing punctuation, a closing quote or a clitic,
        around a hyphen or slash inside a word ("E-Mail", "and/or") and around the separators of a number
        ("1.000", "10:30").
        """
        prev, token = tokens[i - 1], tokens[i]
        before = tokens[i - 2] if i > 1 else ""
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if prev in _NO_SPACE_AFTER or prev in _OPENING or prev == "“" and _opened(tokens, i - 1):
            return False
        if prev == '"' and _opened(tokens, i - 1):
            return False
        if _attaches_left(token) or token in _CLOSING or (token in ('"', "“") and not opening):
            return False
        if token in _JOINERS and prev[-1:].isalnum() and after[:1].isalnum():
            return False
        if prev in _JOINERS and before[-1:].isalnum() and token[:1].isalnum():
            return False
        if prev in _NUMBER_SEPARATORS and before.isdigit() and token.isdigit():
            return False
        return True

    def unknown_symbols(self, text: str) -> list[str]:
        return list(dict.fromkeys(t for t in self.split(text) if t != "<unk>" and t not in self._index))

    def is_boundary(self, token_id: int) -> bool:
        """True for every token except clitics ("'s", "n't"): each word token is a word of its own."""
        self._check_id(token_id)
        return token_id < len(SPECIAL_TOKENS) or not _is_clitic(self._tokens[token_id])

    def _state(self) -> dict[str, Any]:
        return {"min_freq": self.min_freq, "max_vocab": self.max_vocab, "tokens": self._tokens}

    @classmethod
    def _from_state(cls, state: dict[str, Any], path: Path) -> WordTokenizer:
        tokens = cls._tokens_from_state(state, path)
        return cls(tokens, min_freq=state.get("min_freq", 1), max_vocab=state.get("max_vocab"))


_SPACE_RE = re.compile(r"\n|[^\s]+")


class SpaceTokenizer(WordTokenizer):
    """Text that is already tokenised: every run of non-space characters is a token, and so is "\n".

    This keeps a corpus's own tokenisation, so per-token figures compare with published ones (WikiText-2
    counts one token per space-separated word and one end-of-line per line). `decode` joins with single
    spaces. Vocabulary options as for `WordTokenizer`.
    """

    kind = "space"

    @staticmethod
    def split(text: str) -> list[str]:
        return _SPACE_RE.findall(text)

    @staticmethod
    def _spaced(tokens: list[str], i: int, opening: bool) -> bool:
        return True

    def is_boundary(self, token_id: int) -> bool:
        self._check_id(token_id)
        return True


def _byte_level_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE byte-to-character table (printable bytes map to themselves)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return {c: b for b, c in table.items()}


_BYTE_OF_CHAR = _byte_level_decoder()
_MIN_BPE_VOCAB = len(SPECIAL_TOKENS) + 256


class BPETokenizer(Tokenizer):
    """Byte-level BPE from the `tokenizers` library: every text round-trips exactly, nothing is `<unk>`.

    Special-token names inside the text ("<unk>", "<eos>") are encoded as ordinary bytes, not as
    specials. An `<unk>` id (which `encode` never produces) decodes to "<unk>".
    """

    kind = "bpe"

    def __init__(self, library_tokenizer: _HFTokenizer):
        self._tok = library_tokenizer
        # Not saved in the library JSON, so set on every construction.
        self._tok.encode_special_tokens = True
        self._size = self._tok.get_vocab_size(with_added_tokens=True)
        self._bytes = [self._token_bytes(i) for i in range(self._size)]

    def _token_bytes(self, token_id: int) -> bytes:
        if token_id < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[token_id].encode()
        piece = self._tok.id_to_token(token_id)
        return bytes(_BYTE_OF_CHAR[c] for c in piece)

    @property
    def vocab_size(self) -> int:
        return self._size

    @classmethod
    def fit(cls, text: str, vocab_size: int = 1000) -> BPETokenizer:
        """Train byte-level BPE merges on `text`.

        Args:
            text: training text.
            vocab_size: target vocabulary size, specials and the 256 byte tokens included (>= 260);
                the result is smaller when the text offers too few merges.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < _MIN_BPE_VOCAB:
            raise UserError(
                f"bpe tokenizer vocab_size: found {vocab_size!r}; expected an integer >= {_MIN_BPE_VOCAB} "
                "(4 special tokens + 256 byte tokens)"
            )
        if not text:
            raise UserError("bpe tokenizer: the training text is empty (expected some text to fit on)")
        tok = _HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator([text], trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        # Join raw bytes so a character split across tokens still decodes; invalid bytes become U+FFFD.
        chunks: list[bytes] = []
        for i in ids:
            self._check_id(i)
            if i == UNK_ID:
                chunks.append(b"<unk>")
            elif i >= len(SPECIAL_TOKENS):
                chunks.append(self._bytes[i])
        return b"".join(chunks).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        self._check_id(token_id)
        return self._bytes[token_id].decode("utf-8", errors="replace")

    def unknown_symbols(self, text: str) -> list[str]:
        return []

    def is_boundary(self, token_id: int) -> bool:
        self._check_id(token_id)
        if token_id < len(SPECIAL_TOKENS):
            return True
        data = self._bytes[token_id]
        if 0x80 <= data[0] < 0xC0:
            return False  # continues a multi-byte character
        return _starts_new_word(data.decode("utf-8", errors="ignore"))

    def _state(self) -> dict[str, Any]:
        return {"library": json.loads(self._tok.to_str())}

    @classmethod
    def _from_state(cls, state: dict[str, Any], path: Path) -> BPETokenizer:
        library = state.get("library")
        if not isinstance(library, dict):
            raise UserError(f"{path}: 'library' is missing or not an object (expected BPE tokenizer JSON)")
        try:
            tok = _HFTokenizer.from_str(json.dumps(library))
        except Exception as err:  # the library raises its own exception type
            raise UserError(f"{path}: the BPE JSON under 'library' cannot be loaded: {err}") from err
        found = [tok.token_to_id(name) for name in SPECIAL_TOKENS]
        if found != list(range(len(SPECIAL_TOKENS))):
            raise UserError(
                f"{path}: special tokens {list(SPECIAL_TOKENS)} have ids {found}; expected [0, 1, 2, 3]"
            )
        return cls(tok)


TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "word": WordTokenizer,
    "space": SpaceTokenizer,
    "bpe": BPETokenizer,
}


def build_tokenizer(kind: str, text: str, **options: Any) -> Tokenizer:
    """Fit a tokenizer of the given kind on `text`.

    Args:
        kind: "char", "word", "space" or "bpe".
        text: training text.
        **options: passed to the kind's `fit` (word, space: min_freq, max_vocab; bpe: vocab_size).
    """
    cls = TOKENIZER_KINDS.get(kind)
    if cls is None:
        raise UserError(f"tokenizer kind: found {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")
    params = [p for p in inspect.signature(cls.fit).parameters if p != "text"]
    unknown = sorted(set(options) - set(params))
    if unknown:
        allowed = ", ".join(params) or "none"
        raise UserError(f"{kind} tokenizer: unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
    return cls.fit(text, **options)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved by `Tokenizer.save` in `directory`."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a tokenizer saved by rnnkit)")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 at byte offset {err.start} (expected tokenizer JSON)") from None
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg} "
            "(expected tokenizer JSON)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise UserError(f"{path}: not an rnnkit tokenizer file (expected \"format\": \"{_FORMAT}\")")
    if state.get("version") != _VERSION:
        raise UserError(f"{path}: format version {state.get('version')!r}; expected {_VERSION}")
    kind = state.get("kind")
    cls = TOKENIZER_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UserError(f"{path}: tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")
    return cls._from_state(state, path)

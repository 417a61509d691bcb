"""Tagged sentences on disk: CoNLL and CoNLL-U readers, tag schemes (IOB1, BIO, BIOES), and a simple tokenizer.

What is here: `read_conll` and `parse_conll` (CoNLL: whitespace- or tab-separated columns, token first, tag last, blank
lines between sentences, `-DOCSTART-` lines skipped wherever they stand; CoNLL-U: a chosen tag column,
comments, multi-word token ranges and empty nodes skipped), `looks_like_conll` for telling tagged files
from raw text, the tag schemes (`detect_scheme`, `find_invalid`, `entity_spans` with CoNLL-eval
semantics, `convert`, `prepare_tags`), and `tokenize` for raw text with character offsets. What is
not: vocabularies of ids, batching, models and scoring (tasks/tag.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rnnkit.config import UserError
from rnnkit.data.text import read_text

DOCSTART = "-DOCSTART-"
CONLLU_COLUMNS = {"upos": 3, "xpos": 4, "deprel": 7}
CONLL_SUFFIXES = (".conll", ".conllu", ".conllx", ".bio", ".iob", ".bioes", ".iobes")
SCHEMES = ("iob1", "bio", "bioes", "none")
_PREFIXES = {"iob1": ("B", "I"), "bio": ("B", "I"), "bioes": ("B", "I", "E", "S")}


@dataclass
class Sentence:
    """One sentence of a file: its tokens, their tags (None when the file has none) and source lines."""

    tokens: list[str]
    tags: list[str] | None
    lines: list[int] = field(default_factory=list)  # 1-based line number of each token


# ----------------------------------------------------------------------------------------- reading


def _is_conllu(name: str, lines: list[str]) -> bool:
    if name.lower().endswith(".conllu"):
        return True
    for line in lines:
        if line.strip() and not line.startswith("#"):
            fields = line.rstrip("\n").split("\t")
            return len(fields) == 10 and re.fullmatch(r"\d+(-\d+|\.\d+)?", fields[0]) is not None
    return False


def read_conll(path: str | Path, column: str = "upos", require_tags: bool = True) -> list[Sentence]:
    """Read a CoNLL or CoNLL-U file into sentences (see `parse_conll`)."""
    return parse_conll(read_text(path), str(path), column, require_tags)


def parse_conll(text: str, source: str, column: str = "upos", require_tags: bool = True) -> list[Sentence]:
    """Parse CoNLL or CoNLL-U text into sentences.

    Args:
        text: the file's text.
        source: its name, for messages; CoNLL-U is recognised by a `.conllu` suffix or by ten
            tab-separated columns.
        column: CoNLL-U only: which column holds the tag (`upos`, `xpos` or `deprel`).
        require_tags: False accepts token-only lines (one column); their sentences have `tags` None.
    Returns:
        The sentences in file order.
    Raises:
        UserError: no sentence, a line with too few columns, or an empty tag (file and line).
    """
    path = source
    lines = text.split("\n")
    conllu = _is_conllu(source, lines)
    if conllu and column not in CONLLU_COLUMNS:
        raise UserError(f"--column {column}: expected one of {', '.join(CONLLU_COLUMNS)}")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str | None] = []
    numbers: list[int] = []

    def close() -> None:
        if tokens:
            has_tags = all(t is not None for t in tags)
            sentences.append(Sentence(list(tokens), list(tags) if has_tags else None, list(numbers)))  # type: ignore[arg-type]
            tokens.clear()
            tags.clear()
            numbers.clear()

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            close()
            continue
        if conllu:
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise UserError(f"{path}: line {number}: found {len(fields)} tab-separated column(s); "
                                "expected the 10 columns of CoNLL-U")
            if "-" in fields[0] or "." in fields[0]:
                continue  # a multi-word token's range or an empty node: the words themselves carry the tags
            token, tag = fields[1], fields[CONLLU_COLUMNS[column]]
            if tag == "_" and require_tags:
                raise UserError(f"{path}: line {number}: column {column.upper()} is empty ('_'); "
                                f"expected a tag (choose another with --column)")
        else:
            fields = line.rstrip().split("\t") if "\t" in line else line.split()
            token = fields[0].strip()
            if token == DOCSTART:
                continue
            if not token:
                raise UserError(f"{path}: line {number}: the token (first column) is empty; expected a token")
            if len(fields) < 2:
                if require_tags:
                    raise UserError(f"{path}: line {number}: found 1 column ({token!r}); expected a token and "
                                    "a tag separated by whitespace (token first, tag last)")
                tag = None
            else:
                tag = fields[-1].strip()
                if not tag:
                    raise UserError(f"{path}: line {number}: the tag (last column) is empty; expected a tag")
        tokens.append(token)
        tags.append(tag)
        numbers.append(number)
    close()
    if not sentences:
        raise UserError(f"{path}: no sentences found; expected lines of 'token ... tag' with a blank line "
                        "between sentences")
    return sentences


def looks_like_conll(text: str, name: str = "") -> bool:
    """True when text is CoNLL/CoNLL-U rather than raw sentences: by the file's suffix, a `-DOCSTART-`
    line, or tab-separated columns."""
    if Path(name).suffix.lower() in CONLL_SUFFIXES:
        return True
    for line in text.split("\n")[:200]:
        if line.strip() and (line.split()[0] == DOCSTART or "\t" in line.strip()):
            return True
    return False


# -------------------------------------------------------------------------------------- tag schemes


def split_tag(tag: str) -> tuple[str, str]:
    """('B', 'PER') for 'B-PER'; ('O', '') for 'O' or a tag without a prefix."""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return "O", ""


def _opens(tags: list[str], i: int) -> bool:
    """Whether the entity tag at `i` begins a span by position alone: it starts the sentence or follows O or
    a tag of another type."""
    if i == 0:
        return True
    prev_p, prev_kind = split_tag(tags[i - 1])
    return prev_p == "O" or prev_kind != split_tag(tags[i])[1]


def detect_scheme(tag_lists: list[list[str]]) -> str:
    """The entity-tag scheme of a file's tags.

    `none` when some tag is not O or X-TYPE; `bioes` when some have E- or S-; `iob1` when only B- and I-
    occur, some I- opens an entity (after O, another type or at the start) and every B- follows a tag of its
    own type (IOB1, the CoNLL-2003 release's scheme: I- opens, B- only separates two adjacent entities of one
    type); `bio` otherwise (an invalid BIO file stays `bio`, so that it is reported or repaired as such).
    """
    prefixes: set[str] = set()
    i_opens = b_opens = False
    for tags in tag_lists:
        for i, tag in enumerate(tags):
            if tag == "O":
                continue
            p, kind = split_tag(tag)
            if p == "O" or not kind:
                return "none"
            prefixes.add(p)
            if p in ("B", "I") and _opens(tags, i):
                i_opens |= p == "I"
                b_opens |= p == "B"
    if prefixes & {"E", "S"}:
        return "bioes"
    return "iob1" if i_opens and not b_opens else "bio"


def find_invalid(tags: list[str], scheme: str) -> tuple[int, str] | None:
    """The first position where `tags` break the scheme, with the reason; None when valid."""
    allowed = _PREFIXES[scheme]
    for i, tag in enumerate(tags):
        p, kind = split_tag(tag)
        prev_p, prev_kind = split_tag(tags[i - 1]) if i else ("O", "")
        if tag != "O" and p not in allowed:
            return i, f"tag {tag!r} has a prefix that {scheme.upper()} does not use"
        if scheme == "iob1":
            if p == "B" and _opens(tags, i):
                before = f"follows {tags[i - 1]!r}" if i else "starts the sentence"
                return i, (f"tag {tag!r} {before}; under IOB1 an entity begins with I-{kind}, and B-{kind} only "
                           f"separates two adjacent {kind} entities")
            continue
        open_before = prev_p in ("B", "I") and prev_kind == kind
        if p in ("I", "E") and not open_before:
            before = f"follows {tags[i - 1]!r}" if i else "starts the sentence"
            return i, f"tag {tag!r} {before}; under {scheme.upper()} an entity begins with B-{kind}" + (
                f" (or S-{kind})" if scheme == "bioes" else "")
        if scheme == "bioes" and prev_p in ("B", "I") and not (p in ("I", "E") and prev_kind == kind):
            return i, f"tag {tags[i - 1]!r} is followed by {tag!r}; under BIOES an entity ends with E-{prev_kind}"
    if scheme == "bioes" and tags and split_tag(tags[-1])[0] in ("B", "I"):
        return len(tags) - 1, f"tag {tags[-1]!r} ends the sentence; under BIOES an entity ends with E- or S-"
    return None


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, start, end) token spans, end exclusive, read as the CoNLL-2000 `conlleval` does.

    Works for BIO and BIOES alike and tolerates invalid sequences the way conlleval does: an I- after O
    or after another type begins an entity; a B-, S- or change of type ends the one before. seqeval's
    chunker reads the prefixes; a tag that is not `X-TYPE` (see `split_tag`) counts as O.
    """
    from seqeval.metrics.sequence_labeling import get_entities

    plain = ["O" if p == "O" else f"{p}-{kind}" for p, kind in map(split_tag, tags)]
    return [(kind, start, last + 1) for kind, start, last in get_entities(plain)]


def spans_to_tags(spans: list[tuple[str, int, int]], length: int, scheme: str) -> list[str]:
    """Write entity spans as IOB1, BIO or BIOES tags over `length` tokens."""
    tags = ["O"] * length
    ends: dict[int, str] = {}  # where an entity ends (exclusive) -> its type
    for kind, start, end in sorted(spans, key=lambda span: span[1]):
        for i in range(start, end):
            tags[i] = f"I-{kind}"
        if scheme == "iob1":
            if ends.get(start) == kind:  # touches an entity of its own type: B- separates the two
                tags[start] = f"B-{kind}"
        else:
            tags[start] = f"B-{kind}"
        if scheme == "bioes":
            if end - start == 1:
                tags[start] = f"S-{kind}"
            else:
                tags[end - 1] = f"E-{kind}"
        ends[end] = kind
    return tags


def convert(tags: list[str], scheme: str) -> list[str]:
    """The same entities in another scheme (invalid input is read as conlleval reads it, which is also how
    IOB1 reads)."""
    return spans_to_tags(entity_spans(tags), len(tags), scheme)


def prepare_tags(
    sentences: list[Sentence], scheme: str, repair: bool, source: str
) -> tuple[list[Sentence], str, int, str]:
    """Check (and convert) the tags of labelled sentences under a scheme.

    Args:
        sentences: sentences with tags.
        scheme: `auto` (keep the scheme detected in the file; IOB1 is read into BIO), `iob1` (the file is
            IOB1, whatever its tags look like; read into BIO), `bio` or `bioes` (convert to it), `none` (plain
            tags, taken as they are).
        repair: rewrite sequences invalid under the file's scheme (as conlleval reads them) instead of
            raising.
        source: the file name for messages.
    Returns:
        (sentences with checked tags, the scheme they are now in, how many sentences were repaired, the scheme
        the file was found in).
    """
    detected = detect_scheme([s.tags or [] for s in sentences])
    if scheme == "none" or (scheme == "auto" and detected == "none"):
        return sentences, "none", 0, "none"
    if detected == "none":
        example = next(t for s in sentences for t in s.tags or [] if t != "O" and split_tag(t)[0] == "O")
        raise UserError(f"{source}: --scheme {scheme}: the tags are not entity tags (found {example!r}; expected "
                        "O or B-/I-/E-/S- followed by a type); use --scheme none or auto for plain tags")
    if scheme == "iob1":
        if detected == "bioes":
            example = next(t for s in sentences for t in s.tags or [] if split_tag(t)[0] in ("E", "S"))
            raise UserError(f"{source}: --scheme iob1: found {example!r}; IOB1 has only B-, I- and O tags")
        detected = "iob1"
    target = {"auto": detected, "iob1": "bio"}.get(scheme, scheme)
    target = "bio" if target == "iob1" else target  # IOB1 is read, never learnt: BIO marks every beginning
    repaired = 0
    out = []
    for s in sentences:
        tags = s.tags or []
        bad = find_invalid(tags, detected)
        if bad is not None:
            if not repair:
                index, reason = bad
                raise UserError(f"{source}: line {s.lines[index]}: {reason}; pass --scheme iob1 if the file is "
                                "IOB1, --repair to read such sequences as conlleval does (an I- after O begins an "
                                "entity), or fix the file")
            repaired += 1
        new = convert(tags, target) if (bad is not None or target != detected) else tags
        out.append(Sentence(s.tokens, new, s.lines))
    return out, target, repaired, detected


# ------------------------------------------------------------------------------------- raw text


_TOKEN = re.compile(r"https?://\S+|www\.\S+|[@#]?\w+(?:[-'’.]\w+)*|\S")


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Split a line of raw text into (token, start, end) with character offsets, end exclusive.

    URLs, @mentions and #hashtags stay whole; words keep inner hyphens, apostrophes and periods
    ("don't", "U.S", "3.5"); every other non-space character is a token of its own.
    """
    return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]

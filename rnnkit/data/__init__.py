"""Data for rnnkit: reading text, tokenizers (char, word, byte-level BPE) and batching token ids.

What is here: re-exports of the public names of text.py, tokenizers.py and batching.py. What is not:
task-specific datasets, models and training.
"""

from rnnkit.data.batching import (
    BucketedSource,
    StreamBatches,
    bucket_batches,
    epoch_generator,
    pad_sequences,
    stream_layout,
)
from rnnkit.data.split import HOLDOUT_ORDERS, hold_out
from rnnkit.data.text import read_text
from rnnkit.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    TOKENIZER_KINDS,
    UNK_ID,
    BPETokenizer,
    CharTokenizer,
    SpaceTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "TOKENIZER_KINDS",
    "UNK_ID",
    "BPETokenizer",
    "CharTokenizer",
    "SpaceTokenizer",
    "StreamBatches",
    "Tokenizer",
    "WordTokenizer",
    "BucketedSource",
    "bucket_batches",
    "epoch_generator",
    "build_tokenizer",
    "load_tokenizer",
    "pad_sequences",
    "read_text",
    "hold_out",
    "HOLDOUT_ORDERS",
    "stream_layout",
]

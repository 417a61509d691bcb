"""Task models: each a head on the shared recurrent layers, exposing `loss(batch, state)` and `metrics`."""

from rnnkit.models.base import LossOutput, SequenceDropout
from rnnkit.models.language_model import LanguageModel

__all__ = ["LanguageModel", "LossOutput", "SequenceDropout"]

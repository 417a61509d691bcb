"""Task models: each a head on the shared recurrent layers, exposing `loss(batch, state)` and `metrics`."""

from rnnkit.models.base import LossOutput, SequenceDropout
from rnnkit.models.classifier import SequenceClassifier
from rnnkit.models.forecaster import Forecaster
from rnnkit.models.language_model import LanguageModel
from rnnkit.models.recommender import Recommender
from rnnkit.models.seq2seq import Seq2Seq
from rnnkit.models.tagger import Tagger

__all__ = ["Forecaster", "LanguageModel", "LossOutput", "Recommender", "Seq2Seq", "SequenceClassifier",
           "SequenceDropout", "Tagger"]

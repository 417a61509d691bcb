"""The shapes of the service's requests, answers and errors, as pydantic models (and so its OpenAPI schema).

What is here: request bodies (strict: no coercion, no unknown fields), one answer model per endpoint and
per task's prediction, the one error shape, and the lines of the generation stream. What is not: the
routes (app.py) or the limits' values (config.py), apart from the fixed sizes of a request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

MAX_TEXT = 20_000  # characters of a prefix or prompt
MAX_INPUTS = 256  # inputs of one /predict request
MAX_SEED = 2**63  # torch.Generator takes a seed in [0, 2**63)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# ------------------------------------------------------------------------------------ requests


class CompleteRequest(_Strict):
    prefix: str = Field(max_length=MAX_TEXT, description="the text typed so far")
    n: int = Field(5, ge=1, le=50, description="how many completions")
    session: str | None = Field(None, min_length=1, max_length=64,
                                description="a session id from an earlier answer; omitted: start a session")


class GenerateRequest(_Strict):
    prompt: str = Field("", max_length=MAX_TEXT, description="the text to continue")
    max_tokens: int = Field(100, ge=1, le=5000, description="tokens to generate")
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="sampling temperature; 0 is greedy")
    top_k: int | None = Field(None, ge=1, description="sample among the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="sample within the nucleus of this mass")
    seed: int | None = Field(None, ge=0, lt=MAX_SEED, description="seed for reproducible sampling")


class PredictRequest(_Strict):
    inputs: list[Any] = Field(min_length=1, max_length=MAX_INPUTS,
                              description="the inputs, in the task's form: texts for classify, tag and seq2seq; "
                                          "for forecast, the text of a CSV file with the run's columns")


# ------------------------------------------------------------------------------------- answers


class ErrorResponse(BaseModel):
    """Every refusal and failure has this shape."""

    error: str = Field(description="what was wrong, starting with the field's name when one field is at fault")
    field: str | None = Field(description="the field at fault as a dotted path (prefix, inputs.0, ...), 'body' "
                                          "for the body as a whole, 'path' or 'method' for the route; null when "
                                          "no one field is")


class Health(BaseModel):
    status: Literal["ok"]


class SessionStats(BaseModel):
    sessions: int = Field(description="sessions kept now")
    max_sessions: int
    idle_seconds: float = Field(description="a session unused this long expires")
    states_per_session: int = Field(description="recurrent states one session keeps at most")
    state_bytes: int = Field(description="memory held by the states of all sessions")
    max_state_bytes: int = Field(description="the budget for state_bytes; past it sessions are evicted")


class StepBatching(BaseModel):
    batches: int = Field(description="batched model steps run since the service started")
    calls: int = Field(description="the single steps of requests they ran (calls / batches: the mean batch)")


class Info(BaseModel):
    """The run being served; the fields past `parameters` depend on its task (`Task.describe_run`: a task
    without fields declared here sends its own as they are)."""

    model_config = ConfigDict(extra="allow")

    task: str = Field(description="the run's task, a name of the registry (rnnkit.tasks.REGISTRY)")
    run: str
    version: str
    cell: str
    hidden_size: int
    num_layers: int
    parameters: int | None
    max_input_chars: int | None = Field(None, description="classify, tag, seq2seq: characters of one input")
    vocab_size: int | None = Field(None, description="lm")
    tokenizer: str | None = Field(None, description="lm")
    sessions: SessionStats | None = Field(None, description="lm")
    batching: StepBatching | None = Field(None, description="lm, when the steps of concurrent requests are batched")
    labels: list[str] | None = Field(None, description="classify")
    audio: bool | None = Field(None, description="classify: the run reads audio, which the service does not take")
    tags: list[str] | None = Field(None, description="tag")
    scheme: str | None = Field(None, description="tag: the entity scheme (bio, bioes, none)")
    source_vocab_size: int | None = Field(None, description="seq2seq")
    target_vocab_size: int | None = Field(None, description="seq2seq")
    attention: str | None = Field(None, description="seq2seq")
    target: list[str] | None = Field(None, description="forecast: the forecast columns")
    lookback: int | None = Field(None, description="forecast: rows of history read")
    horizon: int | None = Field(None, description="forecast: steps forecast")
    columns: list[str] | None = Field(None, description="forecast: the columns an input CSV has")
    units: str | None = Field(None, description="transcribe: the output units (char, word, bpe)")
    sample_rate: int | None = Field(None, description="transcribe: the rate (Hz) the run hears audio at")
    streaming: bool | None = Field(None, description="transcribe: the run transcribes while audio arrives "
                                                     "(/transcribe/stream)")


class Completion(BaseModel):
    text: str = Field(description="the completed word")
    completion: str = Field(description="what to append to the prefix")
    probability: float


class CompleteResponse(BaseModel):
    completions: list[Completion] = Field(description="most probable first")
    session: str = Field(description="pass it with the next request of this text")


class GenerateResponse(BaseModel):
    text: str = Field(description="the continuation, without the prompt")


class StreamLine(BaseModel):
    """One line of /generate/stream: a piece of text, the end, or an error that ends the stream."""

    text: str | None = None
    done: Literal[True] | None = None
    error: str | None = None
    field: str | None = None


class Deleted(BaseModel):
    status: Literal["deleted"]


class ClassifyPrediction(BaseModel):
    input: str
    label: str
    probabilities: dict[str, float]


class Entity(BaseModel):
    type: str
    text: str
    start: int = Field(description="character offset into the text")
    end: int
    token_start: int
    token_end: int


class TagPrediction(BaseModel):
    text: str
    tokens: list[str]
    tags: list[str]
    offsets: list[tuple[int, int]] = Field(description="each token's [start, end) character offsets")
    entities: list[Entity] | None = Field(None, description="for entity tags (a bio or bioes scheme)")


class TranslationPrediction(BaseModel):
    input: str
    output: str
    source_tokens: list[str]
    output_tokens: list[str]
    attention: list[list[float]] | None = Field(
        None, description="weights (output token, source token); left out when the map is larger than the "
                          "service's limit or the model has no attention")


class ForecastPrediction(BaseModel):
    target: str
    times: list[str] = Field(description="the times forecast")
    history: list[float] = Field(description="the last values of the input, for context")
    forecast: list[float]
    series: dict[str, list[float]] = Field(description="the forecast of every target column")
    lower: list[float] | None = None
    upper: list[float] | None = None


class Transcript(BaseModel):
    """The answer of `POST /transcribe`."""

    text: str = Field(description="the transcript")
    seconds: float = Field(description="the recording's duration")
    words: list[dict[str, Any]] = Field(description="each word with the time it is heard: {word, start, end} "
                                                    "in seconds")
class MusicPrediction(BaseModel):
    frames: list[list[int]] = Field(description="the piece: the prompt, then the frames composed; each frame the "
                                                "MIDI pitches sounding")
    prompt_frames: int = Field(description="how many first frames are the prompt")
    frames_per_beat: int
    tempo: float = Field(description="beats per minute")
    lowest_pitch: int = Field(description="the MIDI pitch of the keyboard's lowest key (21, A0)")
    midi: str = Field(description="the piece as a standard MIDI file, base64")


PREDICTIONS: dict[str, type[BaseModel]] = {"classify": ClassifyPrediction, "tag": TagPrediction,
                                            "seq2seq": TranslationPrediction, "forecast": ForecastPrediction,
                                            "music": MusicPrediction}


def predict_response(task: str) -> type[BaseModel]:
    """The answer model of /predict for one task (a task without a schema here answers plain JSON objects)."""
    item = PREDICTIONS.get(task, dict[str, Any])
    stem = item.__name__.removesuffix("Prediction") if task in PREDICTIONS else task.title().replace("_", "")
    return create_model(f"Predict{stem}Response",
                        predictions=(list[item], Field(description="one per input, in order")))


# The refusals every endpoint with a body can give, for the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body is not valid JSON"},
    413: {"model": ErrorResponse, "description": "the body is too large"},
    415: {"model": ErrorResponse, "description": "the body is not sent as application/json"},
    422: {"model": ErrorResponse, "description": "a field is missing, of the wrong type or out of range"},
    500: {"model": ErrorResponse, "description": "the service failed"},
}

# The same for an endpoint whose own answers are not JSON: FastAPI would file the error model under the
# endpoint's media type, so these name theirs (ErrorResponse is in the schema through the other endpoints).
JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": e["description"],
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for code, e in ERRORS.items()
}


# ------------------------------------------------------------------------------------ recommend

MAX_HISTORY = 10_000  # item ids of one history or one session request


class RecommendRequest(_Strict):
    history: list[str] = Field(max_length=MAX_HISTORY, description="item ids, oldest first; unknown ones are "
                                                                   "skipped and counted")
    top_k: int = Field(10, ge=1, le=1000, description="how many items to recommend")
    allow_repeats: bool = Field(False, description="recommend items the history already holds")


class RecommendSessionRequest(_Strict):
    session: str | None = Field(None, min_length=1, max_length=64,
                                description="a session id from an earlier answer; omitted: start a session")
    events: list[str] = Field(max_length=MAX_HISTORY, description="the new events (item ids), oldest first; "
                                                                  "usually one")
    top_k: int = Field(10, ge=1, le=1000, description="how many items to recommend")
    allow_repeats: bool = Field(False, description="recommend items the session already holds")


class RecommendPrediction(BaseModel):
    items: list[str] = Field(description="item ids, best first")
    scores: list[float] = Field(description="the model's score of each (higher is better)")
    unknown: int = Field(description="items of the input the run does not know, skipped")


class RecommendSessionResponse(RecommendPrediction):
    session: str = Field(description="pass it with the next event of this history")
    events: int = Field(description="known events the session has read in all")


PREDICTIONS["recommend"] = RecommendPrediction

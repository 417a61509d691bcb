"""The service's speech endpoints, for runs whose task streams audio (`Task.streams_audio`).

What is here: `add_speech_routes`, which adds `POST /transcribe` (a whole WAV or FLAC file as the request
body, its transcript back) and the WebSocket `/transcribe/stream` (raw PCM pieces in, partial transcripts
out as the audio arrives, the final transcript when the client says the speech ended). What is not: the
features, the model and the decoding (the task's `open_stream` and `transcribe`).

The stream's protocol: connect to `/transcribe/stream?sample_rate=R&encoding=s16|f32` (defaults: the
run's rate, s16), then send binary messages of mono little-endian PCM (16-bit integers or 32-bit
floats); each is answered with `{"partial": text, "seconds": audio so far}`. A text message `end` (or
`{"end": true}`) ends the recording: the answer is `{"final": text, "seconds": ...}` and the next binary
message starts a new recording on the same connection. A mistake is answered with `{"error": message,
"field": name}` and the connection is closed (code 1003 for unusable data, 1008 for a refused option).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from rnnkit.config import UserError
from rnnkit.serve.config import ServeConfig
from rnnkit.serve.schemas import ERRORS, Transcript

ENCODINGS = {"s16": ("<i2", 1 / 32768.0), "f32": ("<f4", 1.0)}


def _decode_pcm(data: bytes, encoding: str) -> np.ndarray:
    dtype, scale = ENCODINGS[encoding]
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        raise UserError(f"body: a {encoding} message holds whole {width}-byte samples; got {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).astype(np.float32) * scale


def _resampler(rate: int, target: int) -> Any:
    if rate == target:
        return lambda x: x
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return lambda x: resample_poly(x, target // g, rate // g).astype(np.float32)


def add_speech_routes(app: FastAPI, task: Any, loaded: Any, config: ServeConfig) -> None:
    """Add `POST /transcribe` and the WebSocket `/transcribe/stream` for a loaded run of `task`."""
    rate = loaded.spec.sample_rate

    @app.post("/transcribe", response_model=Transcript, responses={**ERRORS, 422: {
        "model": ERRORS[422]["model"], "description": "the body is not a readable WAV or FLAC file"}},
              openapi_extra={"requestBody": {"content": {"audio/wav": {"schema": {"type": "string",
                                                                                  "format": "binary"}}},
                                             "required": True}})
    async def transcribe_file(request: Request) -> dict[str, Any]:
        """The transcript of a whole recording sent as the body (WAV or FLAC, any rate)."""
        import soundfile as sf

        body = await request.body()
        if not body:
            raise UserError("body: empty; expected a WAV or FLAC file")
        try:
            data, file_rate = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)  # (N, channels)
        except Exception as e:  # soundfile's own error types
            reason = str(e).rsplit(": ", 1)[-1]
            raise UserError(f"body: not a readable WAV or FLAC file ({reason})") from None
        if data.shape[0] == 0:
            raise UserError("body: the file holds no samples; expected a recording")
        wave = _resampler(int(file_rate), rate)(data.mean(axis=1))

        def work() -> dict[str, Any]:
            with torch.no_grad():
                return task.transcribe_samples(loaded, wave)

        return await run_in_threadpool(work)

    @app.websocket("/transcribe/stream")
    async def transcribe_stream(ws: WebSocket) -> None:
        await ws.accept()

        async def refuse(message: str, field: str | None, code: int) -> None:
            await ws.send_json({"error": message, "field": field})
            await ws.close(code=code)

        encoding = ws.query_params.get("encoding", "s16")
        if encoding not in ENCODINGS:
            await refuse(f"encoding: expected s16 or f32; got {encoding!r}", "encoding", 1008)
            return
        given = ws.query_params.get("sample_rate", str(rate))
        if not given.isdigit() or not 1000 <= int(given) <= 384_000:
            await refuse(f"sample_rate: expected an integer in 1000..384000 (Hz); got {given!r}", "sample_rate",
                         1008)
            return
        resample = _resampler(int(given), rate)
        try:
            stream = task.open_stream(loaded)
        except UserError as e:
            await refuse(str(e), None, 1008)
            return
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    try:
                        samples = resample(_decode_pcm(message["bytes"], encoding))
                    except UserError as e:
                        await refuse(str(e), "body", 1003)
                        return
                    text = await run_in_threadpool(stream.push, samples)
                    await ws.send_json({"partial": text, "seconds": round(stream.seconds, 3)})
                    continue
                said = (message.get("text") or "").strip()
                try:
                    ended = said == "end" or json.loads(said).get("end") is True
                except (ValueError, AttributeError):
                    ended = False
                if not ended:
                    await refuse(f"body: expected binary PCM or the text 'end'; got {said[:40]!r}", "body", 1003)
                    return
                seconds = stream.seconds
                text = await run_in_threadpool(stream.finish)
                await ws.send_json({"final": text, "seconds": round(seconds, 3)})
        except WebSocketDisconnect:
            return

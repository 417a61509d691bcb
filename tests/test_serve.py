"""The HTTP service of a language model: endpoints, typing sessions, and refusals of bad requests.

A tiny character model is trained once for the module; requests go through FastAPI's in-process
test client. Sessions are checked against the model itself: a completion served through a session
equals the one computed from scratch, and a keystroke costs one model step.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from rnnkit.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from rnnkit.serve import ServeConfig, create_app  # noqa: E402
from rnnkit.tasks import lm, runner  # noqa: E402
from rnnkit.tasks.training import train  # noqa: E402

WORDS = ["the quick brown fox", "a quiet queen", "quilts and quills", "the lazy dog sleeps", "quite quickly"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    rng = random.Random(0)
    (root / "train.txt").write_text("\n".join(rng.choice(WORDS) for _ in range(300)) + "\n", encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=8, hidden_size=24, num_layers=2),
                    train=TrainConfig(epochs=2, batch_size=8, bptt=24, lr=1e-2, log_every=10_000))
    train(cfg, root / "train.txt", root / "run", log=lambda line: None)
    return root / "run"


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir)) as c:
        yield c


def test_health_info_page_and_schema(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["task"] == "lm" and info["cell"] == "lstm" and info["hidden_size"] == 24
    assert info["vocab_size"] > 10 and info["tokenizer"] == "char" and info["version"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="completions"' in page.text
    schema = client.get("/openapi.json").json()
    assert {"/complete", "/generate", "/generate/stream", "/health", "/info"} <= set(schema["paths"])


def test_completion_through_a_session_equals_the_fresh_one(client, run_dir):
    loaded = runner.load(run_dir)
    sid = None
    # Type on, then go back (a backspace), then edit earlier text: each answer equals the fresh one.
    for prefix in ("the q", "the qu", "the qui", "the qu", "a qu", "a quiet q"):
        body = {"prefix": prefix, "n": 3} | ({"session": sid} if sid else {})
        got = client.post("/complete", json=body).json()
        assert sid is None or got["session"] == sid
        sid = got["session"]
        expected = lm.complete(loaded, prefix, 3)
        assert [c["text"] for c in got["completions"]] == [c["text"] for c in expected]
        for a, b in zip(got["completions"], expected, strict=True):
            assert a["probability"] == pytest.approx(b["probability"], rel=1e-4)


def test_a_keystroke_costs_one_step_whatever_the_prefix_length(client):
    app = client.app
    text = "the lazy dog sleeps " * 20  # 400 characters
    sid = client.post("/complete", json={"prefix": text, "n": 1}).json()["session"]
    session = app.state.sessions.get(sid)
    before = session.steps
    client.post("/complete", json={"prefix": text + "q", "n": 1, "session": sid})
    # One step for the new character (the completion search steps copies of the state, not the session).
    assert session.steps - before == 1
    before = session.steps
    client.post("/complete", json={"prefix": text, "n": 1, "session": sid})  # backspace: no step at all
    assert session.steps == before


def test_generate_and_its_stream_agree(client):
    body = {"prompt": "the ", "max_tokens": 30, "temperature": 1.0, "seed": 3}
    text = client.post("/generate", json=body).json()["text"]
    assert len(text) == 30
    with client.stream("POST", "/generate/stream", json=body) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1] == {"done": True}
    assert "".join(m["text"] for m in lines[:-1]) == text


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/complete", {"n": 3}, 422, "prefix"),
    ("/complete", {"prefix": 5}, 422, "prefix"),
    ("/complete", {"prefix": "a", "n": "3"}, 422, "n"),
    ("/complete", {"prefix": "a", "n": 0}, 422, "n"),
    ("/complete", {"prefix": "a", "extra": 1}, 422, "extra"),
    ("/complete", {"prefix": "x" * 20_001}, 422, "prefix"),
    ("/complete", {"prefix": "a", "session": "nope"}, 404, "session"),
    ("/generate", {"max_tokens": 0}, 422, "max_tokens"),
    ("/generate", {"top_p": 1.5}, 422, "top_p"),
    ("/generate", {"temperature": -1}, 422, "temperature"),
])
def test_bad_requests_name_the_field(client, path, body, status, field):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    data = r.json()
    assert data["field"] == field
    assert field in data["error"]
    assert client.get("/health").status_code == 200  # still up


def test_malformed_json_and_oversized_bodies(client):
    r = client.post("/complete", content=b'{"prefix": "a",', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = client.post("/complete", content=b"x" * 2_000_001, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]


def test_sessions_expire_and_are_capped(run_dir):
    app = create_app(run_dir, ServeConfig(max_sessions=2, session_idle_seconds=3600))
    with TestClient(app) as c:
        ids = [c.post("/complete", json={"prefix": "a"}).json()["session"] for _ in range(3)]
        assert len(app.state.sessions) == 2
        assert c.post("/complete", json={"prefix": "a", "session": ids[0]}).status_code == 404  # evicted, oldest
        assert c.post("/complete", json={"prefix": "a", "session": ids[2]}).status_code == 200
        assert c.delete(f"/sessions/{ids[2]}").json() == {"status": "deleted"}
        assert c.delete(f"/sessions/{ids[2]}").status_code == 404
    app = create_app(run_dir, ServeConfig(session_idle_seconds=0.05))
    with TestClient(app) as c:
        sid = c.post("/complete", json={"prefix": "a"}).json()["session"]
        time.sleep(0.1)
        assert c.post("/complete", json={"prefix": "ab", "session": sid}).status_code == 404  # idle too long


def test_concurrent_clients_get_consistent_answers(client, run_dir):
    from concurrent.futures import ThreadPoolExecutor

    loaded = runner.load(run_dir)
    prefixes = ["the q", "a qu", "quil", "the l", "quite q", "the b"] * 3
    expected = {p: [c["text"] for c in lm.complete(loaded, p, 2)] for p in set(prefixes)}

    def ask(prefix):
        return prefix, [c["text"] for c in client.post("/complete", json={"prefix": prefix, "n": 2}).json()["completions"]]

    with ThreadPoolExecutor(8) as pool:
        for prefix, got in pool.map(ask, prefixes):
            assert got == expected[prefix]


# --------------------------------------------------------------------------- failures and limits


@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
@pytest.mark.parametrize("seed", [99999999999999999999999, 2**63, -1])
def test_a_seed_out_of_range_is_refused_by_name(live, path, seed):
    import httpx

    url, _ = live
    with httpx.Client(timeout=10) as http:  # a stream left open fails here instead of hanging the suite
        r = http.post(url + path, json={"prompt": "a", "max_tokens": 3, "seed": seed})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "seed"
        assert http.post(url + path, json={"prompt": "a", "max_tokens": 3, "seed": 2**63 - 1}).status_code == 200


def test_a_failing_generation_ends_its_stream_with_an_error(live, monkeypatch):
    import httpx

    def broken(*args, on_text=None, **kwargs):
        on_text("th")
        raise RuntimeError("the model broke")

    monkeypatch.setattr(lm, "generate", broken)
    url, _ = live
    r = httpx.post(url + "/generate/stream", json={"prompt": "a", "max_tokens": 5}, timeout=10)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0] == {"text": "th"}
    assert "the model broke" in lines[-1]["error"] and len(lines) == 2


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None,
                                          "multipart/form-data; boundary=x"])
def test_a_body_not_sent_as_json_is_refused_by_name(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/complete", "/generate", "/generate/stream"):
        r = client.post(path, content=b'{"prefix": "a"}', headers=headers)
        assert r.status_code == 415, r.text
        assert r.json()["field"] == "body" and "application/json" in r.json()["error"]
    assert client.post("/complete", data={"prefix": "a"}).status_code == 415  # a form, as curl -d sends


def test_a_chunked_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b" " * 100_000

    r = client.post("/complete", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"


@pytest.mark.parametrize(("method", "path", "status", "field"), [
    ("GET", "/nope", 404, "path"),
    ("POST", "/predict", 404, "path"),  # a language model has no /predict
    ("GET", "/complete", 405, "method"),
    ("PUT", "/generate", 405, "method"),
])
def test_routing_errors_have_the_one_shape(client, method, path, status, field):
    r = client.request(method, path)
    assert r.status_code == status
    assert r.json()["field"] == field and r.json()["error"].startswith(field + ":")
    assert set(r.json()) == {"error", "field"}


def test_an_unexpected_failure_is_a_json_500(run_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(lm, "complete", broken)
    with TestClient(create_app(run_dir), raise_server_exceptions=False) as c:
        r = c.post("/complete", json={"prefix": "a"})
        assert r.status_code == 500 and "out of cheese" in r.json()["error"] and r.json()["field"] is None
        assert c.get("/health").status_code == 200


def test_the_schema_documents_the_real_shapes(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components  # FastAPI's default 422, which the service never sends
    for path, operations in schema["paths"].items():
        for op in operations.values():
            for code, answer in op["responses"].items():
                if code[0] in "45":
                    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse"), \
                        (path, code)
    complete = schema["paths"]["/complete"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422"} <= set(complete)
    assert complete["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompleteResponse")
    assert components["CompleteResponse"]["properties"]["completions"]["items"]["$ref"].endswith("/Completion")
    assert set(components["Completion"]["properties"]) == {"text", "completion", "probability"}
    assert components["GenerateRequest"]["properties"]["seed"]["anyOf"][0]["exclusiveMaximum"] == 2**63
    stream = schema["paths"]["/generate/stream"]["post"]["responses"]["200"]["content"]
    assert list(stream) == ["application/x-ndjson"]
    info = schema["paths"]["/info"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert info["$ref"].endswith("/Info")


# ------------------------------------------------------------------------------ a live server


@pytest.fixture(scope="module")
def live(run_dir):
    """The service under uvicorn on a free loopback port: (base URL, app)."""
    import uvicorn

    app = create_app(run_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


def test_a_stream_stops_when_its_client_goes_away(live, monkeypatch):
    import httpx

    url, _ = live
    made, finished = [], threading.Event()
    real = lm.generate

    def slow(*args, on_text=None, **kwargs):
        def each(piece):
            made.append(piece)
            time.sleep(0.002)
            on_text(piece)

        try:
            return real(*args, on_text=each, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(lm, "generate", slow)
    with httpx.Client(timeout=10) as http:
        body = {"prompt": "the ", "max_tokens": 5000, "temperature": 1.0, "seed": 1}
        with http.stream("POST", url + "/generate/stream", json=body) as r:
            assert "text" in json.loads(next(r.iter_lines()))
        # Leaving the block closes the connection after one line: 5,000 tokens take over 10 s.
        assert finished.wait(5), "the generation went on after its client left"
        assert len(made) < 5000
        assert http.get(url + "/health").status_code == 200


def test_many_failing_streams_leave_the_server_up(live, monkeypatch):
    import httpx

    url, _ = live

    def broken(*args, **kwargs):
        raise OverflowError("seed out of range")

    monkeypatch.setattr(lm, "generate", broken)
    with httpx.Client(timeout=5) as http:
        for _ in range(45):  # more than the server's thread pool has threads
            r = http.post(url + "/generate/stream", json={"prompt": "a", "max_tokens": 3})
            assert "seed out of range" in json.loads(r.text.splitlines()[-1])["error"]
        assert http.get(url + "/health", timeout=2).status_code == 200


# ------------------------------------------------------------------ sessions: edits, memory, options


def test_an_edit_after_a_paste_costs_at_most_a_checkpoint_interval(run_dir):
    import torch

    from rnnkit.serve.sessions import CHECKPOINT_EVERY, Session

    loaded = runner.load(run_dir)
    text = " ".join(WORDS * 3)[:200]
    ids = loaded.tokenizer.encode(text)
    session = Session(loaded.model)
    session.read(ids)  # a paste of 200 characters
    assert session.steps == 200
    edits = [ids[:-1], ids[:-2] + ids[-1:], ids[:150], ids[:150] + ids[151:170], ids[:20] + ids[40:60], ids]
    for edit in edits:
        held = session.ids
        common = next((k for k, (a, b) in enumerate(zip(held, edit, strict=False)) if a != b), min(len(held), len(edit)))
        before = session.steps
        with torch.no_grad():
            logits, state = session.read(edit)
            fresh_logits, fresh_state = loaded.model.prefill(torch.tensor([edit]))
        # Back to the nearest checkpoint at or before the edit, then the new text.
        assert session.steps - before <= CHECKPOINT_EVERY - 1 + len(edit) - common
        torch.testing.assert_close(logits, fresh_logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state, fresh_state, rtol=1e-4, atol=1e-5)
    # The audit's case through the service: a backspace right after a paste.
    with TestClient(create_app(run_dir)) as c:
        sid = c.post("/complete", json={"prefix": text, "n": 3}).json()["session"]
        served = c.app.state.sessions.get(sid)
        before = served.steps
        got = c.post("/complete", json={"prefix": text[:-1], "n": 3, "session": sid}).json()
        assert served.steps - before <= CHECKPOINT_EVERY + 1
        expected = lm.complete(loaded, text[:-1], 3)
        assert [x["text"] for x in got["completions"]] == [x["text"] for x in expected]


def test_sessions_stay_within_the_memory_budget(run_dir):
    import torch

    from rnnkit.serve.sessions import state_nbytes

    loaded = runner.load(run_dir)
    _, state = loaded.model.prefill(torch.tensor([[5]]))
    per_state = state_nbytes(state)
    budget = 100 * per_state  # room for 100 positions of state, all sessions together
    config = ServeConfig(session_memory_mb=budget / 2**20)
    app = create_app(run_dir, config)
    with TestClient(app) as c:
        sids = []
        for k in range(4):  # four clients type 40 characters each, one at a time
            sid = None
            for end in range(1, 41):
                body = {"prefix": (WORDS[k] * 3)[:end], "n": 1} | ({"session": sid} if sid else {})
                r = c.post("/complete", json=body)
                assert r.status_code == 200
                sid = r.json()["session"]
                stats = c.get("/info").json()["sessions"]
                assert stats["state_bytes"] <= stats["max_state_bytes"] == budget
            sids.append(sid)
        # 160 positions were read in all: the least recently used sessions went, the last one stays.
        assert c.post("/complete", json={"prefix": "t", "session": sids[0]}).status_code == 404
        assert c.post("/complete", json={"prefix": (WORDS[3] * 3)[:41], "session": sids[3]}).status_code == 200
        # One session alone typing past the budget forgets its oldest states, and still answers right.
        sid, text = None, " ".join(WORDS)[:150]
        for end in range(1, len(text) + 1, 7):
            body = {"prefix": text[:end], "n": 2} | ({"session": sid} if sid else {})
            got = c.post("/complete", json=body).json()
            sid = got["session"]
        assert app.state.sessions.get(sid).nbytes <= budget
        assert [x["text"] for x in got["completions"]] == [x["text"] for x in lm.complete(loaded, text[:end], 2)]
        assert c.post("/complete", json={"prefix": text[:5], "n": 2, "session": sid}).status_code == 200  # re-read


def test_serve_options_reach_the_service(run_dir, monkeypatch):
    import rnnkit.serve.app
    from rnnkit.cli import main

    seen = {}
    monkeypatch.setattr(rnnkit.serve.app, "serve", lambda run, host, port, config: seen.update(config=config))
    assert main(["serve", str(run_dir), "--max-sessions", "7", "--session-idle-seconds", "60",
                 "--session-memory-mb", "32", "--max-input-chars", "500", "--no-batch-steps"]) == 0
    config = seen["config"]
    assert (config.max_sessions, config.session_idle_seconds, config.session_memory_bytes) == (7, 60.0, 32 * 2**20)
    assert config.max_input_chars == 500 and config.batch_steps is False
    for flag, value in (("--max-sessions", "0"), ("--session-memory-mb", "0"), ("--session-idle-seconds", "-1")):
        assert main(["serve", str(run_dir), flag, value]) == 2
    with TestClient(create_app(run_dir, config)) as c:
        stats = c.get("/info").json()["sessions"]
        assert (stats["max_sessions"], stats["idle_seconds"], stats["max_state_bytes"]) == (7, 60.0, 32 * 2**20)


# ------------------------------------------------------------------------------- step batching


class _SlowModel:
    """A model whose steps take long enough that concurrent callers must queue behind each other."""

    def __init__(self, model, fail=False):
        self.model, self.fail, self.rows = model, fail, []

    def step(self, tokens, state):
        time.sleep(0.01)
        self.rows.append(tokens.shape[0])
        if self.fail:
            raise RuntimeError("step failed")
        return self.model.step(tokens, state)


def test_concurrent_steps_run_as_one_batch_with_the_answers_of_single_steps(run_dir):
    import torch

    from rnnkit.serve.batching import BatchedSteps

    model = runner.load(run_dir).model
    slow = _SlowModel(model)
    batched = BatchedSteps(slow)
    rng = torch.Generator().manual_seed(0)
    inputs = []
    for rows in (1, 3, 10, 2, 5, 1, 7, 4):
        _, state = model.prefill(torch.randint(4, 20, (rows, 6), generator=rng))
        inputs.append((torch.randint(4, 20, (rows,), generator=rng), state))
    barrier, got = threading.Barrier(len(inputs)), {}

    def call(k):
        barrier.wait()
        with torch.no_grad():
            got[k] = batched.step(*inputs[k])

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    with torch.no_grad():
        for k, (tokens, state) in enumerate(inputs):
            logits, new_state = model.step(tokens, state)
            torch.testing.assert_close(got[k][0], logits, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[k][1], new_state, rtol=1e-5, atol=1e-6)
            for part in got[k][1]:  # a kept state holds its own rows only
                assert part.untyped_storage().nbytes() == part.numel() * part.element_size()
    # The first caller ran alone; the others queued meanwhile and ran together.
    assert batched.calls == len(inputs) and batched.batches < len(inputs)
    assert max(slow.rows) > 10
    # A lone caller steps the model directly, in a batch of its own.
    before = batched.batches
    batched.step(*inputs[0])
    assert batched.batches == before + 1 and slow.rows[-1] == 1


def test_a_failing_batched_step_fails_every_caller_in_it(run_dir):
    import torch

    from rnnkit.serve.batching import BatchedSteps

    model = runner.load(run_dir).model
    batched = BatchedSteps(_SlowModel(model, fail=True))
    _, state = model.prefill(torch.tensor([[5, 6]]))
    errors, barrier = [], threading.Barrier(4)

    def call():
        barrier.wait()
        try:
            batched.step(torch.tensor([7]), state)
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == ["step failed"] * 4 and not any(t.is_alive() for t in threads)


def test_the_service_batches_the_steps_of_concurrent_clients(run_dir):
    from concurrent.futures import ThreadPoolExecutor

    loaded = runner.load(run_dir)
    prefixes = ["the q", "a qu", "quil", "the l", "quite q", "the b"] * 4
    expected = {p: [c["text"] for c in lm.complete(loaded, p, 3)] for p in set(prefixes)}
    for batch_steps in (True, False):
        with TestClient(create_app(run_dir, ServeConfig(batch_steps=batch_steps))) as c:
            def ask(prefix, c=c):
                return prefix, [x["text"] for x in c.post("/complete", json={"prefix": prefix, "n": 3}).json()["completions"]]

            with ThreadPoolExecutor(8) as pool:
                for prefix, got in pool.map(ask, prefixes):
                    assert got == expected[prefix]
            info = c.get("/info").json()
            assert ("batching" in info) == batch_steps
            if batch_steps:
                assert info["batching"]["calls"] >= info["batching"]["batches"] > 0

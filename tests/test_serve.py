"""The HTTP service of a language model: endpoints, typing sessions, and refusals of bad requests.

A tiny character model is trained once for the module; requests go through FastAPI's in-process
test client. Sessions are checked against the model itself: a completion served through a session
equals the one computed from scratch, and a keystroke costs one model step.
"""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from rnnkit.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from rnnkit.serve import create_app  # noqa: E402
from rnnkit.tasks import lm  # noqa: E402

WORDS = ["the quick brown fox", "a quiet queen", "quilts and quills", "the lazy dog sleeps", "quite quickly"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    rng = random.Random(0)
    (root / "train.txt").write_text("\n".join(rng.choice(WORDS) for _ in range(300)) + "\n", encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=8, hidden_size=24, num_layers=2),
                    train=TrainConfig(epochs=2, batch_size=8, bptt=24, lr=1e-2, log_every=10_000))
    lm.train(cfg, root / "train.txt", root / "run", log=lambda line: None)
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
    loaded = lm.load(run_dir)
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
    app = create_app(run_dir, max_sessions=2, idle_seconds=3600)
    with TestClient(app) as c:
        ids = [c.post("/complete", json={"prefix": "a"}).json()["session"] for _ in range(3)]
        assert len(app.state.sessions) == 2
        assert c.post("/complete", json={"prefix": "a", "session": ids[0]}).status_code == 404  # evicted, oldest
        assert c.post("/complete", json={"prefix": "a", "session": ids[2]}).status_code == 200
        assert c.delete(f"/sessions/{ids[2]}").json() == {"status": "deleted"}
        assert c.delete(f"/sessions/{ids[2]}").status_code == 404
    app = create_app(run_dir, idle_seconds=0.0)
    with TestClient(app) as c:
        sid = c.post("/complete", json={"prefix": "a"}).json()["session"]
        assert c.post("/complete", json={"prefix": "ab", "session": sid}).status_code == 404  # idle too long


def test_concurrent_clients_get_consistent_answers(client, run_dir):
    from concurrent.futures import ThreadPoolExecutor

    loaded = lm.load(run_dir)
    prefixes = ["the q", "a qu", "quil", "the l", "quite q", "the b"] * 3
    expected = {p: [c["text"] for c in lm.complete(loaded, p, 2)] for p in set(prefixes)}

    def ask(prefix):
        return prefix, [c["text"] for c in client.post("/complete", json={"prefix": prefix, "n": 2}).json()["completions"]]

    with ThreadPoolExecutor(8) as pool:
        for prefix, got in pool.map(ask, prefixes):
            assert got == expected[prefix]


def test_an_edit_after_a_paste_costs_at_most_a_checkpoint_interval(run_dir):
    import torch

    from rnnkit.serve.sessions import CHECKPOINT_EVERY, Session

    loaded = lm.load(run_dir)
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

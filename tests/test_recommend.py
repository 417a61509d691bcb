"""The `recommend` task: reading event logs, the leave-one-out split, the losses against their formulas, the
ranking metrics against hand-computed values, SASRec's sampled protocol, seen-item exclusion, sessions that
carry the state, the command line and the HTTP endpoints, all on data made here."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit.config import RunConfig, UserError
from rnnkit.data.recommend import Event, histories, leave_one_out, read_events
from rnnkit.metrics import (
    coverage_at_k,
    hit_at_k,
    mean_reciprocal_rank,
    ndcg_at_k,
    sample_negatives,
    sampled_ranks,
)
from rnnkit.models.recommender import (
    Recommender,
    bpr_max_loss,
    sampled_softmax_loss,
    top1_max_loss,
)

# ------------------------------------------------------------------------------------------ data


def _events(*pairs: tuple[str, str]) -> list[Event]:
    return [Event(u, i, None, f"line {n + 1}") for n, (u, i) in enumerate(pairs)]


def test_leave_one_out_holds_out_the_last_and_the_one_before():
    groups = histories(_events(("a", "1"), ("b", "5"), ("a", "2"), ("c", "7"), ("a", "3"), ("b", "6"),
                               ("a", "4"), ("d", "8"), ("d", "9"), ("d", "10")))
    train, valid, test = leave_one_out(groups)
    items = {k: {g: [e.item for e in evs] for g, evs in part.items()}
             for k, part in {"train": train, "valid": valid, "test": test}.items()}
    assert items["train"] == {"a": ["1", "2"], "b": ["5"], "c": ["7"], "d": ["8"]}
    # valid and test hold whole histories, the scored event last
    assert items["valid"] == {"a": ["1", "2", "3"], "d": ["8", "9"]}
    assert items["test"] == {"a": ["1", "2", "3", "4"], "b": ["5", "6"], "d": ["8", "9", "10"]}


def test_leave_one_out_needs_a_user_with_three_events():
    with pytest.raises(UserError, match="three or more events"):
        leave_one_out(histories(_events(("a", "1"), ("a", "2"), ("b", "3"))))


def test_time_column_orders_events_and_ties_keep_file_order(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("user,item,ts\nu,x,30\nu,y,10\nu,z,10\nv,w,2018-01-02\n", encoding="utf-8")
    with pytest.raises(UserError, match="row 5: time '2018-01-02'"):  # a column holds one kind of time
        read_events(path, time_column="ts")
    path.write_text("user,item,ts\nu,x,30\nu,y,10\nu,z,10\n", encoding="utf-8")
    groups = histories(read_events(path, time_column="ts"))
    assert [e.item for e in groups["u"]] == ["y", "z", "x"]
    dates = tmp_path / "d.tsv"
    dates.write_text("s\titem\tt\n1\ta\t2020-03-01 10:00\n1\tb\t2020-02-01\n", encoding="utf-8")
    groups = histories(read_events(dates, session_column="s", time_column="t"))
    assert [e.item for e in groups["1"]] == ["b", "a"]


def test_jsonl_and_lines(tmp_path):
    j = tmp_path / "e.jsonl"
    j.write_text('{"user": 1, "item": "007"}\n\n{"user": 1, "item": "7"}\n', encoding="utf-8")
    assert [(e.group, e.item, e.where) for e in read_events(j)] == [("1", "007", "line 1"), ("1", "7", "line 3")]
    lines = tmp_path / "e.txt"
    lines.write_text("u1 a\nu1 b extra\n", encoding="utf-8")
    assert [e.item for e in read_events(lines)] == ["a", "b"]


@pytest.mark.parametrize("name,text,options,message", [
    ("e.csv", "user,item\nu,a\nu,\n", {}, "e.csv: row 3: no item"),
    ("e.csv", "user,item,t\nu,a,1\nu,b,soon\n", {"time_column": "t"}, "row 3: time 'soon' in column 't'"),
    ("e.csv", "user,item,t\nu,a,1\nu,b,\n", {"time_column": "t"}, "row 3: no time in column 't'"),
    ("e.csv", "", {}, "the file is empty"),
    ("e.csv", "user,item\n", {}, "holds no events"),
    ("e.csv", "who,item\nu,a\n", {}, "no column 'user' (--user-column)"),
    ("e.txt", "", {}, "the file is empty"),
    ("e.txt", "\n\n", {}, "holds only whitespace"),
    ("e.txt", "u1 a\nu2\n", {}, "line 2: found only 'u2'; expected 'user item'"),
    ("e.txt", "u1 a\n", {"time_column": "t"}, "--time-column needs a CSV, TSV or JSONL file"),
    ("e.jsonl", '{"user": "u"}\n', {}, "line 1: no key 'item' (--item-column)"),
    ("e.jsonl", '{"user": "u", "item": "a"}\n{oops\n', {}, "line 2: not valid JSON"),
    ("e.jsonl", '{"user": "u", "item": "a", "t": "x"}\n', {"time_column": "t"}, "line 1: time 'x'"),
])
def test_bad_input_messages(tmp_path, name, text, options, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_events(path, **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_events(tmp_path / "nope.txt")


# --------------------------------------------------------------------------------------- metrics


def test_hit_ndcg_mrr_coverage_by_hand():
    ranks = [0, 3, 12, np.inf]
    assert hit_at_k(ranks, 10) == 0.5
    assert hit_at_k(ranks, 20) == 0.75
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 4 + 1 / 13 + 0) / 4)
    assert coverage_at_k(np.array([[1, 2], [2, 3]]), 10) == 0.3
    assert list(sampled_ranks(np.array([0.5, 0.1]), np.array([[0.9, 0.2, 0.5], [0.0, -1.0, 0.05]]))) == [1, 0]


def test_sampled_protocol_never_draws_a_touched_item_and_is_fixed_by_its_seed():
    rng = random.Random(0)
    touched = [set(rng.sample(range(1, 30), rng.randint(1, 25))) for _ in range(50)]
    drawn = sample_negatives(touched, 30, 100, seed=3)
    assert drawn.shape == (50, 100)
    for row, seen in zip(drawn, touched, strict=True):
        assert not set(row.tolist()) & seen and row.min() >= 1 and row.max() <= 29
    assert (sample_negatives(touched, 30, 100, seed=3) == drawn).all()
    assert not (sample_negatives(touched, 30, 100, seed=4) == drawn).all()
    # uniform over the untouched items
    counts = np.bincount(sample_negatives([{1, 2}], 12, 20000, seed=0)[0], minlength=12)[3:]
    assert counts.min() > 0.85 * 20000 / 9 and counts.max() < 1.15 * 20000 / 9
    with pytest.raises(ValueError, match="touched every item"):
        sample_negatives([set(range(1, 5))], 5)


# ---------------------------------------------------------------------------------------- losses


def _tiny_scores():
    g = torch.Generator().manual_seed(0)
    positive = torch.randn(4, generator=g, dtype=torch.float64)
    negative = torch.randn(4, 6, generator=g, dtype=torch.float64)
    collision = torch.zeros(4, 6, dtype=torch.bool)
    collision[1, 2] = collision[3, 0] = True
    return positive, negative, collision


def test_sampled_softmax_with_logq_against_the_formula():
    positive, negative, collision = _tiny_scores()
    lq_pos = torch.log(torch.tensor([0.1, 0.2, 0.05, 0.3], dtype=torch.float64))
    lq_neg = torch.log(torch.linspace(0.01, 0.3, 6, dtype=torch.float64))
    got = sampled_softmax_loss(positive, negative, lq_pos, lq_neg, collision)
    for n in range(4):
        terms = [math.exp(positive[n] - lq_pos[n])]
        terms += [math.exp(negative[n, j] - lq_neg[j]) for j in range(6) if not collision[n, j]]
        assert float(got[n]) == pytest.approx(-math.log(terms[0] / sum(terms)))


def test_bpr_max_against_the_formula():
    positive, negative, collision = _tiny_scores()
    got = bpr_max_loss(positive, negative, collision, score_reg=0.5)
    for n in range(4):
        js = [j for j in range(6) if not collision[n, j]]
        z = sum(math.exp(negative[n, j]) for j in js)
        s = {j: math.exp(negative[n, j]) / z for j in js}
        sig = sum(s[j] / (1 + math.exp(-(positive[n] - negative[n, j]))) for j in js)
        expected = -math.log(sig) + 0.5 * sum(s[j] * negative[n, j] ** 2 for j in js)
        assert float(got[n]) == pytest.approx(float(expected))


def test_top1_max_against_the_formula():
    positive, negative, collision = _tiny_scores()
    got = top1_max_loss(positive, negative, collision)
    for n in range(4):
        js = [j for j in range(6) if not collision[n, j]]
        z = sum(math.exp(negative[n, j]) for j in js)
        expected = sum(math.exp(negative[n, j]) / z * (1 / (1 + math.exp(-(negative[n, j] - positive[n])))
                                                       + 1 / (1 + math.exp(-negative[n, j] ** 2))) for j in js)
        assert float(got[n]) == pytest.approx(float(expected))


@pytest.mark.parametrize("loss", ["ce", "sampled", "bpr-max", "top1-max"])
def test_model_losses_train_and_use_the_tied_embedding(loss):
    torch.manual_seed(0)
    model = Recommender(9, embedding_size=4, hidden_size=6, loss=loss, num_negatives=5,
                        popularity=torch.arange(9.0))
    items = torch.tensor([[1, 2, 3], [4, 5, 0]])
    targets = torch.tensor([[2, 3, 4], [5, 6, 0]])
    out = model.loss({"items": items, "lengths": torch.tensor([3, 2]), "targets": targets})
    assert out.count == 5 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0
    assert model.sample_probs[0] == 0  # padding is never drawn
    if loss == "ce":  # full softmax: the mean cross-entropy over the valid positions, padding excluded
        model.eval()
        queries, _ = model.encode(items, torch.tensor([3, 2]))
        scores = queries @ model.item_embedding.weight.t() + model.item_bias
        scores[..., 0] = float("-inf")
        mask = targets != 0
        torch.testing.assert_close(model.loss({"items": items, "lengths": torch.tensor([3, 2]),
                                               "targets": targets}).loss, F.cross_entropy(scores[mask], targets[mask]))


def test_batch_negatives_off_draws_negatives_only():
    torch.manual_seed(0)
    targets = torch.tensor([7, 7, 8])
    on = Recommender(9, num_negatives=5, sample_alpha=0.0)
    off = Recommender(9, num_negatives=5, sample_alpha=0.0, batch_negatives=False)
    torch.manual_seed(1)
    with_batch = on._negatives(targets)
    torch.manual_seed(1)
    drawn = off._negatives(targets)
    assert drawn.shape == (5,) and (drawn != 0).all()  # uniform over the items, never the padding row
    torch.testing.assert_close(with_batch, torch.cat([torch.tensor([7, 8]), drawn]))
    assert torch.allclose(off.sample_probs[1:], torch.full((8,), 1 / 8))  # alpha 0: uniform


@pytest.mark.parametrize("residual", [False, True])
def test_step_by_step_equals_the_whole_history(residual):
    torch.manual_seed(0)
    for cell in ("gru", "lstm"):
        model = Recommender(12, embedding_size=5, hidden_size=7, num_layers=2, cell=cell, residual=residual).eval()
        items = torch.tensor([[3, 1, 4, 1, 5, 9]])
        whole = model(items)
        state = None
        for t in range(items.shape[1]):
            scores, state = model.step(items[:, t], state)
        torch.testing.assert_close(scores, whole)
        torch.testing.assert_close(model.logits_from_state(state, torch.tensor([9])), whole)
        if residual:
            with pytest.raises(ValueError, match="needs the item last read"):
                model.logits_from_state(state)
        else:
            torch.testing.assert_close(model.logits_from_state(state), whole)
        assert scores[0, 0] == float("-inf")


def test_a_residual_query_adds_the_latest_items_embedding():
    torch.manual_seed(0)
    model = Recommender(12, embedding_size=6, hidden_size=6, residual=True).eval()
    assert isinstance(model.projection, torch.nn.Linear)  # a learnt map even when the sizes agree
    items = torch.tensor([[3, 1, 4], [2, 7, 0]])
    lengths = torch.tensor([3, 2])
    queries, _ = model.encode(items, lengths)
    outputs, _ = model.rnn(model.item_embedding(items), None, lengths)
    by_hand = outputs @ model.projection.weight.t() + model.projection.bias + model.item_embedding(items)
    torch.testing.assert_close(queries[0], by_hand[0])
    torch.testing.assert_close(queries[1, :2], by_hand[1, :2])
    last = torch.stack([by_hand[0, 2], by_hand[1, 1]])  # each row's query after its last event
    expected = last @ model.item_embedding.weight.t() + model.item_bias
    expected[:, 0] = float("-inf")
    torch.testing.assert_close(model(items, lengths), expected)
    plain = Recommender(12, embedding_size=6, hidden_size=6)
    assert isinstance(plain.projection, torch.nn.Identity) and not plain.residual


# ------------------------------------------------------------------------------- trained run


def _walks(path, users=60, seed=0):
    """Users walk a cycle of 20 items: the next item is nearly always the following one."""
    rng = random.Random(seed)
    lines = []
    for u in range(users):
        start = rng.randrange(20)
        for k in range(rng.randint(4, 9)):
            lines.append(f"u{u} i{(start + k) % 20}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rec_run(tmp_path_factory):
    from rnnkit.cli import main

    tmp = tmp_path_factory.mktemp("recommend")
    data = _walks(tmp / "walks.txt")
    run = tmp / "run"
    code = main(["train", "recommend", "--train", str(data), "--out", str(run), "--embed", "16", "--hidden", "16",
                 "--epochs", "8", "--batch-size", "16", "--lr", "0.02", "--threads", "1", "--early-stopping", "0",
                 "--embedding-dropout", "0", "--output-dropout", "0"])
    assert code == 0
    return {"run": run, "data": data, "tmp": tmp}


def test_cli_train_evaluate_predict(rec_run, capsys):
    from rnnkit.cli import main

    run, data, tmp = rec_run["run"], rec_run["data"], rec_run["tmp"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # evaluate on the training file scores the same held-out last events as training did
    assert figures == json.loads((run / "test.json").read_text())
    assert figures["users"] == 60 and figures["unknown_targets"] == 0
    assert figures["hit@10"] > 0.9 and figures["ndcg@10"] > 0.7  # the cycle is learnt
    assert figures["sampled"]["hit@10"] >= figures["hit@10"] - 1e-9  # 100 sampled of 20 items: fewer rivals
    popular = figures["baselines"]["most_popular"]
    assert popular["hit@10"] < figures["hit@10"]
    assert set(figures) >= {"hit@10", "ndcg@10", "mrr", "hit@20", "coverage@10", "sampled", "baselines",
                            "by_popularity"}
    assert sum(row["users"] for row in figures["by_popularity"]) == 60
    assert main(["evaluate", str(run), "--data", str(data)]) == 0
    report = capsys.readouterr().out
    assert "by_popularity" in report and " train_count 11-20  users " in report  # a line per bucket
    histories_file = tmp / "h.txt"
    histories_file.write_text("i3 i4 i5\ni17 nope i18\n\n", encoding="utf-8")
    assert main(["predict", str(run), "--input", str(histories_file), "--top-k", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "i6" and lines[1].split()[0] == "i19"
    assert all(len(line.split()) == 3 for line in lines)
    assert "skipped 1 unknown item(s) in 1 of 3 line(s)" in captured.err
    assert main(["predict", str(run), "--input", str(histories_file), "--format", "json", "--top-k", "2"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert answers[1]["unknown"] == 1 and len(answers[0]["scores"]) == 2
    assert answers[0]["scores"][0] >= answers[0]["scores"][1]
    assert main(["predict", str(run), "--input", str(histories_file), "--format", "csv"]) == 2
    assert "--format: expected text or json" in capsys.readouterr().err


def test_seen_items_are_excluded_unless_repeats_are_allowed(rec_run):
    from rnnkit.tasks import recommend, runner

    run = runner.load(rec_run["run"])
    history = [f"i{k}" for k in range(10)]
    excluded = recommend.recommend(run, [history], top_k=15)[0]["items"]
    assert not set(excluded) & set(history) and len(excluded) == 10  # only 10 items are left
    allowed = recommend.recommend(run, [history], top_k=20, allow_repeats=True)[0]["items"]
    assert len(allowed) == 20 and set(history) < set(allowed)
    # evaluate: with repeats allowed, the user's own items compete, so no rank improves
    tmp = rec_run["tmp"]
    strict = recommend.TASK.evaluate(run, rec_run["data"])
    loose = recommend.TASK.evaluate(run, rec_run["data"], allow_repeats=True)
    assert loose["mrr"] <= strict["mrr"] and loose["sampled"] == strict["sampled"]
    assert tmp.exists()


def test_evaluate_counts_unknown_items(rec_run, tmp_path):
    from rnnkit.tasks import recommend, runner

    run = runner.load(rec_run["run"])
    data = tmp_path / "new.txt"
    data.write_text("a i1\na x\na i2\nb i3\nb new\nc i5\n", encoding="utf-8")
    figures = recommend.TASK.evaluate(run, data)
    assert figures["users"] == 2 and figures["unknown_targets"] == 1 and figures["unknown_history_items"] == 1
    assert figures["skipped_users"] == 1
    assert figures["hit@20"] <= 0.5  # the unknown target is a miss


def test_a_session_equals_a_full_reread_of_the_history(rec_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rnnkit.serve import create_app
    from rnnkit.tasks import recommend, runner

    run = runner.load(rec_run["run"])
    events = ["i2", "i3", "unknown", "i4", "i5", "i9", "i10", "i11"]
    with TestClient(create_app(rec_run["run"])) as c:
        sid = None
        for n, item in enumerate(events, start=1):
            body = {"events": [item], "top_k": 5} if sid is None else {"session": sid, "events": [item], "top_k": 5}
            r = c.post("/recommend/session", json=body)
            assert r.status_code == 200, r.text
            got = r.json()
            sid = got["session"]
            expected = recommend.recommend(run, [events[:n]], top_k=5)[0]
            assert got["items"] == expected["items"]
            assert got["scores"] == pytest.approx(expected["scores"], abs=1e-4)
            assert got["unknown"] == (item == "unknown")
        session = c.app.state.sessions.get(sid)
        assert session.steps == len(events) - 1  # one model step per known event, no re-reading
        full = c.post("/recommend", json={"history": events, "top_k": 5}).json()
        assert full["items"] == got["items"] and full["unknown"] == 1
        many = c.post("/predict", json={"inputs": ["i1 i2", ["i7", "i8"]]}).json()["predictions"]
        assert many[0]["items"][0] == "i3" and many[1]["items"][0] == "i9"
        assert c.delete(f"/recommend/sessions/{sid}").json() == {"status": "deleted"}
        r = c.post("/recommend/session", json={"session": sid, "events": ["i1"]})
        assert r.status_code == 404 and r.json()["field"] == "session"
        r = c.post("/recommend", json={"history": "i1 i2"})
        assert r.status_code == 422 and r.json()["field"] == "history"
        r = c.post("/recommend", json={"history": ["i1"], "top_k": 0})
        assert r.status_code == 422 and r.json()["field"] == "top_k"
        r = c.post("/predict", json={"inputs": [3]})
        assert r.status_code == 422 and r.json()["field"] == "inputs.0"
        info = c.get("/info").json()
        assert info["task"] == "recommend" and info["items"] == 20
        cold = c.post("/recommend", json={"history": ["never-seen"], "top_k": 3}).json()
        assert len(cold["items"]) == 3 and cold["unknown"] == 1  # the most popular items


def test_a_run_from_before_the_residual_option_loads_without_it(tmp_path):
    from rnnkit.cli import main
    from rnnkit.tasks import recommend, runner

    data = _walks(tmp_path / "walks.txt", users=20)
    run = tmp_path / "run"
    assert main(["train", "recommend", "--train", str(data), "--out", str(run), "--embed", "8", "--hidden", "8",
                 "--epochs", "1", "--threads", "1", "--no-residual"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["recommend"]["residual"] is False
    del config["recommend"]["residual"]  # as such runs were written
    (run / "config.json").write_text(json.dumps(config))
    loaded = runner.load(run)
    assert not loaded.model.residual and isinstance(loaded.model.projection, torch.nn.Identity)
    assert recommend.recommend(loaded, [["i1", "i2"]], top_k=3)[0]["items"]


def test_config_checks_and_bidirectional_refused():
    with pytest.raises(UserError, match="--loss"):
        RunConfig.create("recommend", recommend={"loss": "hinge"})
    with pytest.raises(UserError, match="--max-length"):
        RunConfig.create("recommend", recommend={"max_length": -1})
    with pytest.raises(UserError, match=r"--label-smoothing: expected a number in \[0, 1\); got 1\.0"):
        RunConfig.create("recommend", recommend={"label_smoothing": 1.0})
    with pytest.raises(UserError, match="--label-smoothing: expected 0 with --loss bpr-max"):
        RunConfig.create("recommend", recommend={"label_smoothing": 0.1, "loss": "bpr-max"})
    from rnnkit.tasks.recommend import build_model

    with pytest.raises(UserError, match="--bidirectional"):
        build_model(RunConfig.create("recommend", model={"bidirectional": True}), 5)


def test_a_test_file_and_a_valid_file(tmp_path):
    from rnnkit.tasks.training import train

    data = _walks(tmp_path / "train.txt", users=30)
    valid = _walks(tmp_path / "valid.txt", users=10, seed=1)
    cfg = RunConfig.create("recommend", model={"embedding_size": 8, "hidden_size": 8},
                           train={"epochs": 1, "batch_size": 8, "threads": 1})
    result = train(cfg, data, tmp_path / "run", valid_path=valid, test_path=valid, log=lambda s: None)
    assert set(result["test"]) >= {"hit@10", "sampled"} and not (tmp_path / "run" / "test.json").exists()


def test_export_to_onnx_matches_the_model(rec_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    from rnnkit.cli import main
    from rnnkit.tasks import runner

    assert main(["export", str(rec_run["run"]), "--format", "onnx", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["graphs"]) == {"recommend", "step"}
    assert all(g["max_abs_diff"] < 1e-4 for g in report["graphs"].values())
    run = runner.load(rec_run["run"])
    items = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
    session = ort.InferenceSession(str(tmp_path / "recommend.onnx"))
    got = session.run(None, {"items": items.numpy(), "lengths": np.array([11])})[0]
    expected = run.model(items).detach().numpy()
    assert np.isneginf(got[0, 0]) and np.allclose(got[0, 1:], expected[0, 1:], atol=1e-4)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("block", [1024, 3])  # one block; blocks of 3 items, the last one short (7 = 3 + 3 + 1)
def test_the_tied_softmax_loss_equals_cross_entropy_and_its_gradients(block, smoothing, monkeypatch):
    from rnnkit.models import recommender
    from rnnkit.models.recommender import TiedSoftmaxLoss, tied_softmax_loss

    monkeypatch.setattr(recommender, "SCORE_BLOCK", block)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 6, 2, 2, 4])
    weights = torch.randn(5, generator=g, dtype=torch.float64)
    got = tied_softmax_loss(q, w, b, t, label_smoothing=smoothing)
    expected = F.cross_entropy(q @ w.t() + b, t, reduction="none", label_smoothing=smoothing)
    torch.testing.assert_close(got, expected)
    if smoothing:  # the smoothing did something
        assert not torch.allclose(got, F.cross_entropy(q @ w.t() + b, t, reduction="none"))
    grads = torch.autograd.grad((got * weights).sum(), (q, w, b))
    reference = torch.autograd.grad((expected * weights).sum(), (q, w, b))
    for a, r in zip(grads, reference, strict=True):
        torch.testing.assert_close(a, r)
    # the backward reuses the scores' memory: a second backward through the same graph is refused, not wrong
    again = TiedSoftmaxLoss.apply(q, w, b, t).sum()
    again.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        again.backward()


def test_a_smoothed_model_trains_and_validates_unsmoothed():
    torch.manual_seed(0)
    items = torch.tensor([[1, 2, 3, 4], [2, 3, 4, 0]])
    batch = {"items": items, "lengths": torch.tensor([4, 3]), "targets": torch.tensor([[2, 3, 4, 5], [3, 4, 5, 0]])}
    plain = Recommender(6, embedding_size=4, hidden_size=4)
    smooth = Recommender(6, embedding_size=4, hidden_size=4, label_smoothing=0.2)
    smooth.load_state_dict(plain.state_dict())
    queries, _ = plain.encode(items, batch["lengths"])
    mask = batch["targets"] != 0
    scores = queries[mask] @ plain.item_embedding.weight[1:].t() + plain.item_bias[1:]
    expected = F.cross_entropy(scores, batch["targets"][mask] - 1, label_smoothing=0.2)
    torch.testing.assert_close(smooth.loss(batch).loss, expected)
    valid = {"items": items, "lengths": batch["lengths"], "valid_targets": torch.tensor([5, 5]),
             "seen": torch.zeros(2, 1, dtype=torch.long)}
    with torch.no_grad():
        assert smooth.loss(valid).stats == plain.loss(valid).stats
    with pytest.raises(ValueError, match="label_smoothing"):
        Recommender(6, loss="sampled", label_smoothing=0.1)


def test_inspect_reads_the_histories(rec_run, tmp_path):
    from rnnkit.tasks import recommend, runner

    run = runner.load(rec_run["run"])
    layer, sequences, loss = recommend.TASK.encoder_sequences(run, rec_run["data"])
    assert layer is run.model.rnn and len(sequences) == 60
    first = sequences[0]
    assert first.labels == [run.vocab.items[int(r) - 1] for r in first.batch["items"][0]]
    assert (first.batch["targets"][0, :-1] == first.batch["items"][0, 1:]).all()  # the next item at each step
    assert torch.isfinite(loss(first.batch))


def test_sampled_validation_figures_rank_the_target_against_its_negatives():
    torch.manual_seed(0)
    model = Recommender(40, embedding_size=4, hidden_size=6, monitor="sampled").eval()
    assert model.monitor == ("sampled_ndcg@10", "max")
    items = torch.tensor([[3, 5, 7], [2, 9, 0]])
    lengths = torch.tensor([3, 2])
    targets = torch.tensor([11, 4])
    negatives = torch.randint(12, 40, (2, 100))
    with torch.no_grad():  # as validation runs
        out = model.loss({"items": items, "lengths": lengths, "valid_targets": targets,
                          "seen": torch.tensor([[3, 5, 7], [2, 9, 0]]), "negatives": negatives})
        scores = model(items, lengths)
    hits = ndcg = 0.0
    for b in range(2):  # by hand: items of the sample scored above the target
        above = sum(float(scores[b, n]) > float(scores[b, targets[b]]) for n in negatives[b])
        hits += above < 10
        ndcg += 1 / math.log2(above + 2) if above < 10 else 0.0
    figures = Recommender.metrics(out.stats, out.count)
    assert figures["sampled_hit@10"] == pytest.approx(hits / 2)
    assert figures["sampled_ndcg@10"] == pytest.approx(ndcg / 2)
    assert "hit@10" in figures and "ndcg@10" in figures
    with pytest.raises(ValueError, match="monitor"):
        Recommender(40, monitor="recall")


def test_the_report_breaks_the_figures_down_by_the_held_out_items_training_count():
    from rnnkit.tasks.recommend import Cases, _by_popularity

    counts = np.array([0, 0, 1, 4, 300])  # rows 0 (padding) to 4
    cases = Cases([[1]] * 5, [1, 2, 2, 3, 0], [set()] * 5, [set()] * 5)  # the last target is unknown
    found = {"ranks": np.array([0, 20, 5, 3, np.inf]), "sampled": np.array([5, 50, 0, 12, np.inf])}
    rows = _by_popularity(found, cases, counts)
    assert [r["train_count"] for r in rows] == ["0", "1-2", "3-5"]  # empty buckets and unknown targets left out
    assert [r["users"] for r in rows] == [1, 2, 1] and [r["share"] for r in rows] == [0.25, 0.5, 0.25]
    never, rare, few = rows
    assert never["hit@10"] == 1.0 and never["ndcg@10"] == 1.0 and never["sampled_hit@10"] == 1.0
    assert never["sampled_ndcg@10"] == pytest.approx(1 / math.log2(7))
    assert rare["hit@10"] == 0.5 and rare["ndcg@10"] == pytest.approx(0.5 / math.log2(7))
    assert rare["sampled_hit@10"] == 0.5 and rare["sampled_ndcg@10"] == 0.5
    assert few["hit@10"] == 1.0 and few["sampled_hit@10"] == 0.0

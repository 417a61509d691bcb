"""The language model and its task: step equals forward, decoding through the model, completion."""

import math

import pytest
import torch
from torch.testing import assert_close

from rnnkit import decoding
from rnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnkit.data import build_tokenizer
from rnnkit.models.language_model import LanguageModel
from rnnkit.tasks import lm, runner
from rnnkit.tasks.training import train

TEXT = ("the quick brown fox jumps over the lazy dog. the quiet queen quilts quickly.\n"
        "a lazy dog sleeps in the sun. the fox runs home.\n") * 40


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("tie", [False, True])
def test_step_equals_forward(cell, tie):
    model = LanguageModel(20, 8, 12, 2, cell, tie_weights=tie).eval()
    tokens = torch.randint(0, 20, (3, 7))
    logits, state = model(tokens)
    s = None
    for t in range(7):
        step_logits, s = model.step(tokens[:, t], s)
        assert_close(step_logits, logits[:, t])
    last, _ = model.prefill(tokens)
    assert_close(last, logits[:, -1])


def test_tied_weights_share_one_matrix():
    model = LanguageModel(20, 8, 12, 1, "lstm", tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert isinstance(model.projection, torch.nn.Linear)  # H=12 -> E=8
    n_untied = sum(p.numel() for p in LanguageModel(20, 8, 12, 1, "lstm").parameters())
    n_tied = sum(p.numel() for p in model.parameters())
    assert n_tied == n_untied - 20 * 12 + 12 * 8 - 20 * 8 + 20 * 8  # decoder matrix gone, projection added


def test_loss_ignores_padding_and_metrics():
    model = LanguageModel(10, 4, 6, 1, "gru").eval()
    inputs = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    targets = torch.tensor([[2, 3, 4, 5], [6, 7, -100, -100]])
    out = model.loss({"inputs": inputs, "targets": targets, "lengths": torch.tensor([4, 2])})
    assert out.count == 6
    short = model.loss({"inputs": inputs[1:, :2], "targets": targets[1:, :2]})
    long = model.loss({"inputs": inputs[:1], "targets": targets[:1]})
    assert math.isclose(out.stats["loss_sum"], short.stats["loss_sum"] + long.stats["loss_sum"], rel_tol=1e-5)
    m = LanguageModel.metrics({"loss_sum": 6.0}, 3)
    assert m["loss"] == 2.0 and math.isclose(m["perplexity"], math.exp(2)) and math.isclose(m["bits_per_token"], 2 / math.log(2))


def test_beam_one_equals_greedy_on_a_language_model():
    model = LanguageModel(15, 8, 16, 2, "lstm").eval()
    logits, state = model.prefill(torch.tensor([[1, 5, 7]]))
    greedy = decoding.greedy(model, logits, state, 12)[0].tolist()
    beam = decoding.beam_search(model, logits, state, beam_size=1, max_tokens=12, length_penalty=0.0)[0][0]
    assert beam.tokens == greedy


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    (root / "train.txt").write_text(TEXT, encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=16, hidden_size=48, num_layers=1),
                    train=TrainConfig(epochs=8, batch_size=8, bptt=32, lr=1e-2, log_every=10_000))
    train(cfg, root / "train.txt", root / "run", log=lambda line: None)
    return root


def test_generation_reproducible_by_seed(char_run):
    run = runner.load(char_run / "run")
    a = lm.generate(run, "the ", max_tokens=40, temperature=1.0, seed=7)
    b = lm.generate(run, "the ", max_tokens=40, temperature=1.0, seed=7)
    c = lm.generate(run, "the ", max_tokens=40, temperature=1.0, seed=8)
    assert a == b and len(a) == 40
    assert a != c
    pieces = []
    streamed = lm.generate(run, "the ", max_tokens=40, temperature=1.0, seed=7, on_text=pieces.append)
    assert "".join(pieces) == streamed == a
    greedy = lm.generate(run, "the ", max_tokens=30, temperature=0)
    beam1 = decoding.greedy(run.model, *run.model.prefill(torch.tensor([run.tokenizer.encode("the ")])), 30)
    assert greedy == run.tokenizer.decode(beam1[0].tolist())


def test_char_completion_probabilities_match_the_model(char_run):
    run = runner.load(char_run / "run")
    found = lm.complete(run, "the qu", n=3)
    assert found and found[0]["text"].startswith("qu")
    assert all(a["probability"] >= b["probability"] for a, b in zip(found, found[1:], strict=False))
    # recompute the best completion's probability step by step: its characters, then any boundary
    tok, model = run.tokenizer, run.model
    logits, state = model.prefill(torch.tensor([tok.encode("the qu")]))
    p = 1.0
    with torch.no_grad():
        for ch in found[0]["completion"]:
            probs = logits.softmax(-1)[0]
            p *= float(probs[tok.encode(ch)[0]])
            logits, state = model.step(torch.tensor(tok.encode(ch)), state)
    probs = logits.softmax(-1)[0]
    p *= sum(float(probs[i]) for i in range(tok.vocab_size) if tok.is_boundary(i))
    assert math.isclose(found[0]["probability"], p, rel_tol=1e-4)
    assert found[0]["text"] in {"quick", "quiet", "queen", "quilts", "quickly"}


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_word_and_bpe_completion(tmp_path, kind):
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(embedding_size=16, hidden_size=32, num_layers=1),
                    data=DataConfig(tokenizer=kind, vocab_size=300),
                    train=TrainConfig(epochs=4, batch_size=4, bptt=16, lr=1e-2, log_every=10_000))
    train(cfg, tmp_path / "t.txt", tmp_path / "run", log=lambda line: None)
    found = lm.complete(tmp_path / "run", "the qu", n=3)
    assert 1 <= len(found) <= 3
    for r in found:
        assert r["text"].startswith("qu") and r["text"] == "qu" + r["completion"]
        assert 0 < r["probability"] <= 1
    after_space = lm.complete(tmp_path / "run", "the lazy ", n=2)
    assert after_space and all(r["text"] for r in after_space)


def test_unknown_prompt_symbols_warn(char_run):
    run = runner.load(char_run / "run")
    with pytest.warns(UserWarning, match="never saw.*'Z'"):
        lm.generate(run, "the Zebra", max_tokens=5, seed=0)


def test_tokenizer_decode_of_training_text_round_trips():
    tok = build_tokenizer("char", TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_adaptive_softmax_is_a_normalised_distribution_and_loss_matches():
    model = LanguageModel(50, 8, 32, 1, "lstm", adaptive_softmax=(10, 30)).eval()
    tokens = torch.randint(0, 50, (2, 5))
    targets = torch.randint(0, 50, (2, 5))
    logits, _ = model(tokens)
    assert_close(logits.exp().sum(-1), torch.ones(2, 5))
    out = model.loss({"inputs": tokens, "targets": targets})
    manual = -logits.gather(-1, targets.unsqueeze(-1)).sum()
    assert math.isclose(out.stats["loss_sum"], float(manual.detach()), rel_tol=1e-5)
    step, _ = model.step(tokens[:, 0])
    assert_close(step, logits[:, 0])
    with pytest.raises(ValueError, match="adaptive_softmax"):
        LanguageModel(50, 8, 12, 1, "lstm", adaptive_softmax=(10, 60))


@pytest.mark.parametrize(("cell", "options"), [
    ("layernorm-lstm", {"zoneout": 0.1}),
    ("mingru", {"recurrent_dropout": 0.0}),
    ("peephole-lstm", {"weight_drop": 0.2, "recurrent_dropout": 0.1}),
])
def test_every_cell_and_regulariser_trains_saves_and_reloads(tmp_path, cell, options):
    (tmp_path / "train.txt").write_text(TEXT[:3000], encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(cell=cell, embedding_size=8, hidden_size=16, num_layers=2, **options),
                    train=TrainConfig(epochs=1, batch_size=4, bptt=16, lr=1e-2, log_every=10_000))
    train(cfg, tmp_path / "train.txt", tmp_path / "run", log=lambda line: None)
    run = runner.load(tmp_path / "run")
    assert run.model.rnn.cell_name == cell
    assert run.model.rnn.zoneout == options.get("zoneout", 0.0)
    assert len(lm.generate(run, "the ", max_tokens=5, seed=0)) == 5
    figures = runner.evaluate(tmp_path / "run", tmp_path / "train.txt")
    assert math.isfinite(figures["loss"])

"""The encoder-decoder model: a torch.nn reference with copied weights, step-by-step decoding against the
teacher-forced forward, scheduled sampling, state reordering, and decoding (beam 1 = greedy, batched beam
= one input at a time)."""

import pytest
import torch
from torch import nn

from rnnkit import decoding
from rnnkit.models.seq2seq import IGNORE_INDEX, Seq2Seq

VS, VT = 11, 13


def _model(cell="gru", attention="general", bidirectional=True, num_layers=1, **kw):
    torch.manual_seed(0)
    return Seq2Seq(VS, VT, embedding_size=5, hidden_size=6, num_layers=num_layers, cell=cell,
                   bidirectional=bidirectional, attention=attention, **kw).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([4, 2, 3])
    source = torch.randint(4, VS, (3, 4), generator=g)
    source[1, 2:] = 0
    source[2, 3:] = 0
    target_inputs = torch.randint(4, VT, (3, 5), generator=g)
    target_inputs[:, 0] = 2
    return source, lengths, target_inputs


def test_matches_a_torch_nn_reference_with_copied_weights():
    m = _model("gru", "general")
    source, lengths, target_inputs = _data()
    logits, weights = m(source, lengths, target_inputs)

    enc = nn.GRU(5, 6, batch_first=True, bidirectional=True)
    enc.load_state_dict(m.encoder.state_dict())
    dec = nn.GRUCell(11, 6)
    dec.load_state_dict({k.replace("_l0", ""): v for k, v in m.decoder.state_dict().items()})
    W = m.attention.key_proj.weight  # (H, 2H)
    for b in range(3):
        n = int(lengths[b])
        memory, h_n = enc(m.source_embedding(source[b : b + 1, :n]))  # (1, n, 2H), (2, 1, H)
        h = torch.tanh(m.bridge[0](torch.cat([h_n[0], h_n[1]], dim=1)))  # (1, H)
        feed = torch.zeros(1, 6)
        for t in range(target_inputs.shape[1]):
            x = torch.cat([m.target_embedding(target_inputs[b : b + 1, t]), feed], dim=1)
            h = dec(x, h)
            scores = torch.stack([h[0] @ (W @ memory[0, s]) for s in range(n)])  # (n,)
            w = scores.softmax(0)
            context = w @ memory[0]  # (2H,)
            feed = torch.tanh(m.combine(torch.cat([context, h[0]]).unsqueeze(0)))
            torch.testing.assert_close(logits[b, t], m.output(feed)[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(weights[b, t, :n], w, atol=1e-5, rtol=1e-5)
            assert bool((weights[b, t, n:] == 0).all())


@pytest.mark.parametrize("attention", ["additive", "dot", "general", "none"])
@pytest.mark.parametrize(("cell", "bidirectional", "num_layers"), [("lstm", True, 2), ("gru", False, 1),
                                                                   ("rnn", True, 1)])
def test_step_by_step_decoding_equals_teacher_forced_forward(attention, cell, bidirectional, num_layers):
    m = _model(cell, attention, bidirectional, num_layers)
    source, lengths, target_inputs = _data()
    with torch.no_grad():
        logits, _ = m(source, lengths, target_inputs)
        first, state = m.start(source, lengths)
        steps = [first]
        for t in range(1, target_inputs.shape[1]):
            out, state = m.step(target_inputs[:, t], state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, dim=1), logits, atol=1e-5, rtol=1e-5)


def test_a_row_alone_equals_the_row_in_a_padded_batch():
    m = _model("lstm", "additive")
    source, lengths, target_inputs = _data()
    with torch.no_grad():
        logits, _ = m(source, lengths, target_inputs)
        alone, _ = m(source[1:2, :2], lengths[1:2], target_inputs[1:2])
    torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=1e-5)


def test_scheduled_sampling_of_one_feeds_the_models_own_predictions():
    m = _model("gru", "dot", scheduled_sampling=1.0).train()  # no dropout: training mode differs only by sampling
    source, lengths, target_inputs = _data()
    logits, _ = m(source, lengths, target_inputs)
    with torch.no_grad():
        out, state = m.start(source, lengths)
        free = [out]
        for _ in range(1, target_inputs.shape[1]):
            out, state = m.step(out.argmax(-1), state)
            free.append(out)
    torch.testing.assert_close(logits.detach(), torch.stack(free, dim=1), atol=1e-5, rtol=1e-5)
    m.scheduled_sampling = 0.0
    teacher, _ = m(source, lengths, target_inputs)
    assert not torch.allclose(teacher, logits)


def test_reorder_state_repeats_rows():
    m = _model("lstm", "general")
    source, lengths, _ = _data()
    with torch.no_grad():
        _, state = m.start(source, lengths)
        tokens = torch.tensor([5, 6, 7])
        again, _ = m.step(tokens, m.reorder_state(state, torch.tensor([2, 2, 0])))
        for row, (origin, token) in enumerate([(2, 5), (2, 6), (0, 7)]):
            alone, _ = m.step(torch.tensor([token]), m.reorder_state(state, torch.tensor([origin])))
            torch.testing.assert_close(again[row], alone[0])


def test_loss_counts_target_tokens_and_learns():
    m = _model("gru", "general").train()
    source, lengths, target_inputs = _data()
    targets = torch.cat([target_inputs[:, 1:], torch.full((3, 1), 3)], dim=1)
    targets[1, 3:] = IGNORE_INDEX
    batch = {"source": source, "source_lengths": lengths, "target_inputs": target_inputs, "targets": targets}
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    first = m.loss(batch)
    assert first.count == 13
    for _ in range(60):
        out = m.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    figures = m.metrics(out.stats, out.count)
    assert out.loss.item() < 0.1 * first.loss.item()
    assert figures["token_accuracy"] == 1.0


def test_beam_one_equals_greedy():
    m = _model("lstm", "general")
    source, lengths, _ = _data()
    logits, state = m.start(source, lengths)
    greedy = decoding.greedy(m, logits, state, 8, eos_id=3)
    hyps = decoding.beam_search(m, logits, state, 1, 8, eos_id=3, length_penalty=0.0)
    for b in range(3):
        row = greedy[b].tolist()
        row = row[: row.index(3)] if 3 in row else row
        assert hyps[b][0].tokens == row


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_batched_beam_equals_one_input_at_a_time(length_penalty):
    m = _model("gru", "additive")
    source, lengths, _ = _data()
    max_lens = torch.tensor([6, 3, 5])
    logits, state = m.start(source, lengths)
    batched = decoding.beam_search(m, logits, state, 4, max_lens, eos_id=3, length_penalty=length_penalty)
    for b in range(3):
        n = int(lengths[b])
        lg, st = m.start(source[b : b + 1, :n], lengths[b : b + 1])
        alone = decoding.beam_search(m, lg, st, 4, int(max_lens[b]), eos_id=3, length_penalty=length_penalty)
        assert [h.tokens for h in alone[0]] == [h.tokens for h in batched[b]]
        for x, y in zip(alone[0], batched[b], strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-5)
        assert all(len(h.tokens) <= max_lens[b] for h in batched[b])


def test_adaptive_softmax_loss_and_steps_agree_with_its_log_probabilities():
    m = _model("gru", "general", adaptive_softmax=(6,))
    source, lengths, target_inputs = _data()
    targets = torch.cat([target_inputs[:, 1:], torch.full((3, 1), 3)], dim=1)
    targets[1, 3:] = IGNORE_INDEX
    batch = {"source": source, "source_lengths": lengths, "target_inputs": target_inputs, "targets": targets}
    with torch.no_grad():
        log_probs, _ = m(source, lengths, target_inputs)  # (B, T, Vt), normalised
        out = m.loss(batch)
        first, state = m.start(source, lengths)
        second, _ = m.step(target_inputs[:, 1], state)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 5))
    expected = torch.nn.functional.nll_loss(log_probs.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(torch.stack([first, second], 1), log_probs[:, :2])
    accuracy = (log_probs.argmax(-1) == targets)[targets != IGNORE_INDEX].float().mean().item()
    assert m.metrics(out.stats, out.count)["token_accuracy"] == pytest.approx(accuracy)

"""The trainer: exact resume, seeds, schedules, clipping, early stopping, non-finite losses, checkpoints."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from rnnkit.checkpoint import CHECKPOINT_FILE, load_checkpoint
from rnnkit.config import TrainConfig, UserError
from rnnkit.models.language_model import LanguageModel
from rnnkit.tasks.lm import LineSource, StreamSource
from rnnkit.train import LRSchedule, Trainer, TrainingError, seed_everything


def _stream(n=4000, vocab=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    # a learnable pattern with noise: next token mostly (previous + 1) mod vocab
    ids = [0]
    for _ in range(n - 1):
        ids.append((ids[-1] + 1) % vocab if torch.rand(1, generator=g) < 0.8 else int(torch.randint(vocab, (1,), generator=g)))
    return torch.tensor(ids)


def _setup(tmp_path, name, **overrides):
    seed_everything(0)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 4, "bptt": 10, "lr": 1e-2, "log_every": 1000,
                         "checkpoint_minutes": 100.0, **overrides})
    model = LanguageModel(12, 8, 16, 2, "lstm", dropout=0.3, embedding_dropout=0.1, output_dropout=0.2)
    ids = _stream()
    train = StreamSource(ids[:3200], cfg.batch_size, cfg.bptt)
    valid = StreamSource(ids[3200:], 2, cfg.bptt)
    return Trainer(model, train, valid, cfg, tmp_path / name, log=lambda line: None)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("stop_at", [7, 80])  # mid-epoch, and exactly at the end of the first epoch
def test_resume_equals_uninterrupted(tmp_path, stop_at):
    full = _setup(tmp_path, "full", eval_every=25)
    full.fit()
    assert len(full.train_data) == 80
    part = _setup(tmp_path, "part", eval_every=25, max_steps=stop_at)
    part.fit()
    assert part.state.step == stop_at
    resumed = _setup(tmp_path, "part", eval_every=25)
    resumed.resume()
    assert resumed.state.step == stop_at
    resumed.fit()
    assert resumed.state.step == full.state.step
    for k, v in _weights(full).items():
        assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert resumed.state.best == full.state.best


def test_same_seed_same_run_other_seed_differs(tmp_path):
    a = _setup(tmp_path, "a", epochs=1)
    a.fit()
    b = _setup(tmp_path, "b", epochs=1)
    b.fit()
    for k, v in _weights(a).items():
        assert torch.equal(b.model.state_dict()[k], v)
    seed_everything(1)
    c = _setup(tmp_path, "c", epochs=1, seed=1)
    seed_everything(1)  # the model is initialised from the global seed, as train() does
    c.model = LanguageModel(12, 8, 16, 2, "lstm")
    assert not torch.equal(c.model.embedding.weight, a.model.embedding.weight)


def test_training_reduces_validation_loss_and_writes_run_dir(tmp_path):
    t = _setup(tmp_path, "run", epochs=3)
    before = t.evaluate(t.valid_data)["loss"]
    t.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    assert lines[-1]["valid_loss"] < before - 0.5
    assert {"epoch", "step", "train_loss", "lr", "clip_fraction", "valid_perplexity"} <= set(lines[0])
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_truncated_bptt_carries_state_between_chunks(tmp_path):
    """The loss of the stream chunk by chunk with carried state equals one pass over each whole row."""
    t = _setup(tmp_path, "run")
    model = t.model.eval()
    src = t.valid_data
    carried_sum, count, state = 0.0, 0, None
    for batch in src.batches(0):
        out = model.loss(batch, state)
        state, carried_sum, count = out.state, carried_sum + out.stats["loss_sum"], count + out.count
    rows = src.stream.data  # (B, M)
    whole = model.loss({"inputs": rows[:, :-1], "targets": rows[:, 1:]})
    assert count == whole.count
    assert math.isclose(carried_sum, whole.stats["loss_sum"], rel_tol=1e-5)


def test_clipping_is_counted(tmp_path):
    t = _setup(tmp_path, "run", epochs=1, clip=1e-3)
    t.fit()
    assert t.state.clipped == t.state.step
    t2 = _setup(tmp_path, "run2", epochs=1, clip=0.0)
    t2.fit()
    assert t2.state.clipped == 0


def test_early_stopping_and_nonfinite(tmp_path):
    t = _setup(tmp_path, "run", epochs=50, lr=1e-9, early_stopping=2, eval_every=10)
    t.fit()
    assert t.state.step < 50 * 80  # stopped long before the last epoch
    bad = _setup(tmp_path, "bad", epochs=1)
    with torch.no_grad():
        bad.model.decoder.bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite \(loss nan\) at step 1 \(epoch 1, batch 1\); nothing was "
                                            r"saved yet"):
        bad.fit()
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_a_nonfinite_loss_names_the_files_that_were_kept(tmp_path):
    t = _setup(tmp_path, "run", epochs=1, eval_every=5, checkpoint_minutes=1e-9)
    loss = t.model.loss

    def poisoned_loss(batch, state=None):
        out = loss(batch, state)
        if batch.get("poison"):
            out.loss = out.loss * float("nan")
        return out

    t.model.loss = poisoned_loss
    t.train_data = _PoisonedSource(t.train_data, poisoned={12})
    with pytest.raises(TrainingError, match="at step 13 .*best evaluation so far are kept in .*model.safetensors and "
                                            "the last checkpoint in .*checkpoint.pt") as e:
        t.fit()
    for name in ("model.safetensors", "checkpoint.pt"):
        assert (tmp_path / "run" / name).exists() and name in str(e.value)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["train_state"]["step"] == 12


def test_lr_schedules():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=1.0)
    warm = LRSchedule(opt, TrainConfig(lr=1.0, warmup_steps=4, scheduler="constant"), 100)
    assert [round(warm.rate(s), 3) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = LRSchedule(opt, TrainConfig(lr=1.0, scheduler="cosine"), 100)
    assert cos.rate(0) == 1.0 and abs(cos.rate(50) - 0.5) < 1e-9 and cos.rate(100) < 1e-12
    plateau = LRSchedule(opt, TrainConfig(lr=1.0, scheduler="plateau", lr_factor=0.5, lr_patience=1), 100)
    for value in [3.0, 2.0, 2.5, 2.5, 2.5, 1.0]:
        plateau.observe(value, lower_is_better=True)
    assert plateau.rate(10) == 0.5  # reduced once after two evaluations without improvement
    restored = LRSchedule(opt, TrainConfig(lr=1.0), 100)
    restored.load_state_dict(plateau.state_dict())
    assert restored.rate(10) == plateau.rate(10)


def test_checkpoint_falls_back_to_previous_when_damaged(tmp_path):
    t = _setup(tmp_path, "run", epochs=1, max_steps=5)
    t.fit()
    path = tmp_path / "run" / CHECKPOINT_FILE
    t.state.step = 99
    t.save_checkpoint()  # the first one becomes .prev
    assert load_checkpoint(path)["train_state"]["step"] == 99
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert load_checkpoint(path)["train_state"]["step"] == 5
    path.with_name(CHECKPOINT_FILE + ".prev").write_bytes(b"garbage")  # unpickles to a ValueError
    with pytest.raises(UserError, match=r"every checkpoint is damaged \(truncated or corrupted\): .*checkpoint.pt and "
                                        r".*checkpoint.pt.prev; nothing is left to resume from") as e:
        load_checkpoint(path)
    assert "invalid literal" not in str(e.value)


def test_resuming_from_the_previous_checkpoint_warns_and_keeps_it(tmp_path):
    _setup(tmp_path, "run", epochs=1, max_steps=5).fit()
    again = _setup(tmp_path, "run", epochs=1, max_steps=10)
    again.resume()
    again.fit()  # checkpoint.pt at step 10, checkpoint.pt.prev at step 5
    path = tmp_path / "run" / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    resumed = _setup(tmp_path, "run", epochs=1, max_steps=12)
    with pytest.warns(UserWarning, match=r"checkpoint.pt is damaged \(truncated or corrupted\); resuming from the "
                                         r"previous checkpoint, .*checkpoint.pt.prev"):
        resumed.resume()
    assert resumed.state.step == 5
    resumed.fit()
    # The damaged file was replaced, not rotated into .prev: the good previous checkpoint is still there.
    assert load_checkpoint(path)["train_state"]["step"] == 12
    assert load_checkpoint(path.with_name(CHECKPOINT_FILE + ".prev"))["train_state"]["step"] == 5


def test_resume_with_other_shapes_says_what_does_not_fit(tmp_path):
    _setup(tmp_path, "run", epochs=1, max_steps=3).fit()
    other = _setup(tmp_path, "run", epochs=1)
    other.model = LanguageModel(12, 8, 20, 2, "lstm")  # hidden 20, not 16
    other.optimizer = torch.optim.Adam(other.model.parameters())
    with pytest.raises(UserError, match=r"checkpoint.pt \(--resume\): the weights do not fit the model: .*"
                                        r"rnn.weight_hh_l0 has shape \(64, 16\), the model expects \(80, 20\)"):
        other.resume()


def test_line_source_full_bptt(tmp_path):
    seqs = [[5, 6, 7, 8, 3], [5, 6, 3], [9], [5, 6, 7, 3]]
    src = LineSource(seqs, batch_size=2, shuffle=True, seed=0)
    assert len(src) == 2  # the one-token line is dropped
    batches = list(src.batches(0))
    seen = sorted(int(b["lengths"].sum()) for b in batches)
    assert sum(seen) == 4 + 2 + 3
    for b in batches:
        for row, n in enumerate(b["lengths"].tolist()):
            assert torch.all(b["targets"][row, n:] == -100)
            assert torch.equal(b["inputs"][row, 1:n], b["targets"][row, : n - 1])
    assert [b["inputs"].tolist() for b in src.batches(1)] == [b["inputs"].tolist() for b in src.batches(1)]
    assert list(src.batches(0, start=1))[0]["inputs"].tolist() == batches[1]["inputs"].tolist()


class _PoisonedSource:
    """A stream whose chosen batches are marked so that the model's loss on them is NaN."""

    stateful = True

    def __init__(self, inner, poisoned):
        self.inner, self.poisoned = inner, set(poisoned)

    def __len__(self):
        return len(self.inner)

    def batches(self, epoch, start=0):
        for i, batch in enumerate(self.inner.batches(epoch, start), start=start):
            yield {**batch, "poison": i in self.poisoned}


def test_skip_nonfinite_skips_and_counts_the_bad_batches(tmp_path):
    t = _setup(tmp_path, "skip", epochs=1, skip_nonfinite=True)
    loss = t.model.loss

    def poisoned_loss(batch, state=None):
        out = loss(batch, state)
        if batch["poison"]:
            out.loss = out.loss * float("nan")
        return out

    t.model.loss = poisoned_loss
    t.train_data = _PoisonedSource(t.train_data, poisoned={3, 40})
    t.valid_data = None
    t.fit()
    assert t.state.skipped == 2
    assert t.state.step == 80 - 2  # every other batch made an update
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert t.summary()["skipped_batches"] == 2  # every task's result reports it
    last = json.loads((tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_batches"] == 2


def test_bf16_mixed_precision_trains_with_fp32_weights(tmp_path):
    t = _setup(tmp_path, "bf16", epochs=1, precision="bf16", max_steps=30)
    t.fit()
    assert t.state.step == 30
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in t.model.parameters())
    assert math.isfinite(t.state.best)


class _Killed(Exception):
    pass


def test_resume_after_a_kill_during_the_closing_evaluation_writes_no_duplicate_line(tmp_path):
    # The epoch's last step is checkpointed before the evaluation that closes the epoch, with the same
    # step number; a kill right after that evaluation's line must not leave it twice in metrics.jsonl.
    full = _setup(tmp_path, "full", eval_every=25)
    full.fit()
    whole = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()

    broken = _setup(tmp_path, "broken", eval_every=25, checkpoint_minutes=1e-9)
    real_validate = broken._validate

    def validate_then_die(loss):
        stop = real_validate(loss)
        if broken.state.epoch == 1 and broken.state.batch == 0:  # the evaluation closing epoch 1
            raise _Killed
        return stop

    broken._validate = validate_then_die
    with pytest.raises(_Killed):
        broken.fit()
    assert load_checkpoint(tmp_path / "broken" / CHECKPOINT_FILE)["train_state"]["step"] == 80
    resumed = _setup(tmp_path, "broken", eval_every=25)
    resumed.resume()
    resumed.fit()
    lines = (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [json.loads(x)["step"] for x in whole]
    assert [json.loads(x)["valid_loss"] for x in lines] == [json.loads(x)["valid_loss"] for x in whole]


class _KillAt:
    """A batch source that dies (an exception, as a killed process) when batch `at` of the first epoch is due."""

    def __init__(self, source, at):
        self.source, self.at, self.stateful = source, at, source.stateful

    def __len__(self):
        return len(self.source)

    def batches(self, epoch, start=0):
        for i, batch in enumerate(self.source.batches(epoch, start), start=start):
            if epoch == 0 and i == self.at:
                raise _Killed
            yield batch


@pytest.mark.parametrize("eval_every, kill_at, saved_step", [(25, 60, 50), (0, 30, None)])
def test_every_validation_leaves_a_checkpoint_to_resume_from(tmp_path, eval_every, kill_at, saved_step):
    # checkpoint_minutes is 100: no checkpoint comes from the clock, only from the validations.
    full = _setup(tmp_path, "full", eval_every=eval_every)
    full.fit()
    killed = _setup(tmp_path, "killed", eval_every=eval_every)
    killed.train_data = _KillAt(killed.train_data, kill_at)
    with pytest.raises(_Killed):
        killed.fit()
    path = tmp_path / "killed" / CHECKPOINT_FILE
    if saved_step is None:  # no validation before the kill: nothing to resume from, as before
        assert not path.exists()
        return
    assert load_checkpoint(path)["train_state"]["step"] == saved_step
    resumed = _setup(tmp_path, "killed", eval_every=eval_every)
    resumed.resume()
    resumed.fit()
    for k, v in _weights(full).items():
        assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    records = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["valid_loss"]) for r in records] == [(r["step"], r["valid_loss"]) for r in expected]


def test_the_closing_validation_of_an_epoch_is_a_resume_point(tmp_path):
    killed = _setup(tmp_path, "killed", epochs=3)
    killed.train_data = _KillAt(killed.train_data, 10**9)  # never dies: look at the file after epoch 1
    seen = []
    real = killed._checkpoint_now

    def spy():
        seen.append((killed.state.epoch, killed.state.batch, killed.state.step))
        real()

    killed._checkpoint_now = spy
    killed.fit()
    assert seen[:2] == [(1, 0, 80), (2, 0, 160)]  # after each epoch's validation, then the closing save


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_optimizers_use_the_fused_kernels_where_torch_has_them(name):
    from rnnkit.train import build_optimizer

    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), TrainConfig(optimizer=name, lr=0.1, momentum=0.9 if name != "adam" else 0.0))
    assert opt.defaults.get("fused") is (None if name == "rmsprop" else True)
    # The fused step is the same update as the reference implementation.
    ref_model = torch.nn.Linear(3, 2)
    ref_model.load_state_dict(model.state_dict())
    cls = type(opt)
    kwargs = {k: v for k, v in opt.defaults.items() if k not in ("fused", "foreach", "differentiable", "decoupled_weight_decay")}
    ref = cls(ref_model.parameters(), **{**kwargs, "foreach": False})
    x = torch.randn(5, 3)
    for _ in range(3):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_damaged_run_json_files_give_clear_errors(tmp_path):
    """A run file that is not JSON, not UTF-8 text, or a directory: an rnnkit error naming it, no traceback."""
    from rnnkit.config import UserError
    from rnnkit.io import read_json

    cases = {"bad.json": b'{"task": "lm",', "binary.json": b"\xff\xfe\x00garbage", "dir.json": None}
    for name, content in cases.items():
        path = tmp_path / name
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
    with pytest.raises(UserError, match=r"bad.json: not valid JSON \(line 1"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(UserError, match=r"binary.json: not UTF-8 text \(byte 0"):
        read_json(tmp_path / "binary.json")
    with pytest.raises(UserError, match=r"dir.json: is a directory"):
        read_json(tmp_path / "dir.json")
    with pytest.raises(UserError, match=r"missing.json: not found"):
        read_json(tmp_path / "missing.json")

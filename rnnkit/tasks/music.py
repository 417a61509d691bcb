"""Music composition: MIDI, MusicXML or piano-roll JSON to a trained run, and a run to scores and new music.

What is here: the piece batch source, the `music` task (pieces read on the run's grid, a random hold-out
of whole pieces, the model built, `evaluate`'s negative log-likelihood and frame accuracy, its answers over
HTTP and its page), `predict` (each piece's likelihood), `compose` (behind `rnnkit generate` for music runs:
a MIDI or piano-roll JSON file, a picture of the roll and, through FluidSynth, audio) and `render_audio`.
What is not: reading and writing MIDI (data/music.py), the network (models/music.py), the metrics and the
plot (metrics.py, viz.py).

A run directory holds nothing beyond the usual files: the grid, the tempo and the program of the files
it writes are in config.json's [music] section.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from rnnkit import metrics, viz
from rnnkit.config import RunConfig, UserError
from rnnkit.data.batching import BucketedSource
from rnnkit.data.music import (
    LOWEST,
    N_KEYS,
    Piece,
    frames_to_roll,
    read_pieces,
    roll_to_frames,
    roll_to_json,
    roll_to_midi,
)
from rnnkit.data.split import hold_out
from rnnkit.evaluation import evaluate_model
from rnnkit.io import atomic_write, write_output
from rnnkit.models.music import MusicModel
from rnnkit.tasks.base import LoadedRun, Prepared, Say, Task

if TYPE_CHECKING:
    from rnnkit.serve.config import ServeConfig

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
EVAL_BATCH = 32  # pieces per forward pass when scoring
MAX_SERVE_STEPS = 2048  # frames one request of the service may compose
DEFAULT_BEATS = 32  # what `generate` composes without --steps


class PieceSource(BucketedSource):
    """Whole pieces, padded to the longest of each batch: `rolls` (B, T, 88) float and `lengths` (B,)."""

    def __init__(self, rolls: list[np.ndarray], batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        super().__init__([len(r) for r in rolls], batch_size, shuffle, seed)
        self.rolls = [torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32)) for r in rolls]

    @property
    def frames(self) -> int:
        return sum(self.lengths)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for index in self.order(epoch)[start:]:
            lengths = torch.tensor([self.lengths[i] for i in index])
            rolls = torch.zeros(len(index), int(lengths.max()), self.rolls[index[0]].shape[1])  # (B, T, K)
            for row, i in enumerate(index):
                rolls[row, :self.lengths[i]] = self.rolls[i]
            yield {"rolls": rolls, "lengths": lengths}


def _chunks(rolls: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Training pieces cut into pieces of at most `size` frames (--bptt), each read from a fresh state."""
    if size <= 0:
        return rolls
    return [r[i:i + size] for r in rolls for i in range(0, len(r), size)]


def read_music(cfg: RunConfig, path: str | Path, say: Say | None = None) -> list[Piece]:
    """The pieces of a file or folder on the run's grid; skipped files of a folder are counted aloud."""
    reading = read_pieces(path, cfg.options.frames_per_beat)
    if reading.skipped and say is not None:
        say(f"{path}: skipped {len(reading.skipped)} of {len(reading.skipped) + len(reading.pieces)} files that "
            f"could not be used; the first: {reading.skipped[0]}")
    return reading.pieces


def build_model(cfg: RunConfig, n_keys: int = N_KEYS) -> MusicModel:
    m, o = cfg.model, cfg.options
    if m.bidirectional:
        raise UserError("--bidirectional: a music model reads the past to predict what comes next; drop the option")
    if m.embeddings:
        raise UserError("--embeddings: a music model reads piano rolls, not words; drop the option")
    return MusicModel(n_keys, m.hidden_size, m.num_layers, m.cell, m.dropout, m.output_dropout, o.output,
                      o.pitch_hidden, o.pitch_window, o.input_dropout, m.fused, m.recurrent_options())


def _describe(pieces: list[Piece]) -> str:
    frames = sum(len(p.roll) for p in pieces)
    return f"{len(pieces):,} pieces, {frames:,} frames"


class MusicTask(Task):
    """Piano rolls in; a distribution over each next frame of the 88 keys; new music out."""

    name = "music"
    summary = "polyphonic music model over the 88 piano keys (MIDI, MusicXML or piano-roll JSON)"
    limits_input_chars = False
    page: ClassVar[str] = "music.html"

    # ---------------------------------------------------------------------------------- training

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        pieces = read_music(cfg, train_path, say)
        if valid_path is not None:
            valid = read_music(cfg, valid_path, say)
        else:
            pieces, valid = hold_out(pieces, cfg.data.valid_fraction, "random", seed=cfg.train.seed,
                                     source=str(train_path), unit="pieces")
            say(f"no --valid given: holding out {len(valid)} of the pieces of {train_path} for validation "
                f"(--valid-fraction {cfg.data.valid_fraction})")
        t = cfg.train
        train_rolls = _chunks([p.roll for p in pieces], t.bptt)
        train = PieceSource(train_rolls, t.batch_size, shuffle=True, seed=t.seed)
        valid_source = PieceSource([p.roll for p in valid], max(t.batch_size, EVAL_BATCH))
        o = cfg.options
        describe = (f"music: train {_describe(pieces)}, valid {_describe(valid)}; {cfg.model.cell} "
                    f"{cfg.model.num_layers}x{cfg.model.hidden_size}, {o.output} output over {N_KEYS} keys, "
                    "{params} parameters")
        return Prepared(train=train, valid=valid_source, assets={}, describe=describe, meta={"n_keys": N_KEYS},
                        result={"train_frames": train.frames})

    def build_model(self, cfg: RunConfig, **assets: Any) -> MusicModel:
        return build_model(cfg)

    def check_test(self, cfg: RunConfig, test_path: str | Path, prepared: Prepared) -> None:
        read_music(cfg, test_path)

    def test_result(self, figures: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return figures, (f"test: nll {figures['nll']:.4f} nats per frame, frame accuracy "
                         f"{figures['frame_accuracy']:.4f} ({figures['frames']:,} frames)")

    # ------------------------------------------------------------------------------ using a run

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        if meta.get("n_keys", N_KEYS) != N_KEYS:
            raise UserError(f"{run_dir}: config.json says {meta['n_keys']} keys; music runs have {N_KEYS}")
        return {}

    def evaluate(self, run: LoadedRun, data_path: str | Path, beam: int | None = None) -> dict[str, Any]:
        """`nll`: nats per frame summed over the 88 keys; `frame_accuracy`: TP / (TP + FP + FN) over all frames
        with the model's most likely frame given the true past (for the autoregressive head: searched key by key,
        greedily or with a beam of `beam` partial frames)."""
        if beam is not None and beam < 1:
            raise UserError(f"--beam: expected an integer >= 1; got {beam}")
        beam = beam or 1
        pieces = read_music(run.config, data_path, _warn)
        source = PieceSource([p.roll for p in pieces], EVAL_BATCH)
        figures = evaluate_model(run.model, source, run.device)
        tp = fp = fn = 0
        for batch in source.batches(0):
            rolls, lengths = batch["rolls"].to(run.device), batch["lengths"].to(run.device)
            chosen = run.model.most_likely(rolls, lengths, beam).cpu().numpy()
            keep = (torch.arange(rolls.shape[1])[None, :] < batch["lengths"][:, None]).numpy()
            counts = metrics.frame_counts(batch["rolls"].numpy()[keep], chosen)
            tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
        return {"nll": figures["nll"], "frame_accuracy": metrics.frame_accuracy(tp, fp, fn),
                "frames": source.frames, "pieces": len(pieces), "decoding": _decoding(run, beam)}

    def predict(self, run: LoadedRun, input_path: str | Path, output_path: str | Path,
                format: str | None = None) -> list[dict[str, Any]]:
        """Score each piece of a file or folder by its likelihood: CSV (or JSON lines) with the piece, its frames,
        its NLL per frame (nats, summed over the keys) and its total log-likelihood."""
        if str(input_path) == "-":
            raise UserError("--input: music runs read MIDI, MusicXML or piano-roll JSON files; give a file or folder")
        kind = format or ("jsonl" if str(output_path).endswith((".json", ".jsonl")) else "csv")
        if kind not in ("csv", "jsonl"):
            raise UserError(f"--format {format}: expected csv or jsonl for music runs")
        pieces = read_music(run.config, input_path, _warn)
        rows = []
        for i in range(0, len(pieces), EVAL_BATCH):
            part = pieces[i:i + EVAL_BATCH]
            lengths = torch.tensor([len(p.roll) for p in part])
            rolls = torch.zeros(len(part), int(lengths.max()), N_KEYS)  # (B, T, 88), in the file's order
            for row, p in enumerate(part):
                rolls[row, :len(p.roll)] = torch.from_numpy(p.roll.astype(np.float32))
            log_p = run.model.log_likelihood(rolls.to(run.device), lengths.to(run.device))
            for piece, value in zip(part, log_p.cpu().tolist(), strict=True):
                rows.append({"piece": piece.name, "frames": len(piece.roll), "nll": -value / len(piece.roll),
                             "log_likelihood": value})
        if kind == "csv":
            text = "piece,frames,nll,log_likelihood\n" + "".join(
                f"{_csv_field(r['piece'])},{r['frames']},{r['nll']:.6f},{r['log_likelihood']:.6f}\n" for r in rows)
        else:
            text = "".join(json.dumps(r) + "\n" for r in rows)
        write_output(output_path, text)
        return rows

    # ------------------------------------------------------------------------ serving, composing

    def answer(self, run: LoadedRun, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
        """Each input asks for a composition: {"steps", "temperature", "seed", "prompt": frames of MIDI pitches},
        all optional. The answer has the frames, the grid and tempo, and the MIDI file (base64)."""
        o = run.config.options
        out = []
        total = 0
        for i, request in enumerate(inputs):
            where = f"inputs.{i}"
            request = {} if request is None else request
            if not isinstance(request, dict):
                raise UserError(f"{where}: expected an object with steps, temperature, seed and prompt (all "
                                f"optional); got {type(request).__name__}")
            unknown = sorted(set(request) - {"steps", "temperature", "seed", "prompt"})
            if unknown:
                raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; expected steps, temperature, seed, "
                                "prompt")
            steps = request.get("steps", DEFAULT_BEATS * o.frames_per_beat)
            temperature = request.get("temperature", 1.0)
            seed = request.get("seed", 0)
            _check_number(f"{where}.steps", steps, int, 1, MAX_SERVE_STEPS)
            _check_number(f"{where}.temperature", temperature, (int, float), 0, 100)
            _check_number(f"{where}.seed", seed, int, 0, 2**63 - 1)
            total += steps
            if total > MAX_SERVE_STEPS:
                raise UserError(f"{where}.steps: the request asks for {total:,} frames so far; at most "
                                f"{MAX_SERVE_STEPS:,} are composed per request")
            prompt = frames_to_roll(request["prompt"], f"{where}.prompt") if request.get("prompt") else None
            roll = compose_roll(run, steps, prompt, float(temperature), seed)
            out.append({"frames": roll_to_frames(roll), "prompt_frames": 0 if prompt is None else len(prompt),
                        "frames_per_beat": o.frames_per_beat, "tempo": o.tempo, "lowest_pitch": LOWEST,
                        "midi": base64.b64encode(roll_to_midi(roll, o.frames_per_beat, o.tempo, o.program)).decode()})
        return out

    def describe_run(self, run: LoadedRun) -> dict[str, Any]:
        o = run.config.options
        return {"output": o.output, "frames_per_beat": o.frames_per_beat, "tempo": o.tempo,
                "default_steps": DEFAULT_BEATS * o.frames_per_beat}

    def compose(self, run: LoadedRun, out: str | None = None, steps: int | None = None, prompt: str | None = None,
                temperature: float = 1.0, seed: int | None = None, plot: str | None = None,
                audio: str | None = None, say: Say | None = None) -> dict[str, Any]:
        """`rnnkit generate` for music runs: compose `steps` frames after a prompt file and write them to `out`
        (MIDI, or piano-roll JSON for a .json name), with a picture (`plot`) and audio (`audio`, a WAV file)."""
        o = run.config.options
        if not out:
            raise UserError("--out: music runs write a file; give --out FILE.mid (or FILE.json for a piano roll)")
        kind = Path(out).suffix.lower()
        if kind not in (".mid", ".midi", ".json"):
            raise UserError(f"--out {out}: expected a .mid, .midi or .json file name")
        steps = DEFAULT_BEATS * o.frames_per_beat if steps is None else steps
        _check_number("--steps", steps, int, 1, 10**6)
        if temperature < 0:
            raise UserError(f"--temperature: expected a number >= 0 (0: the most likely key by key); got {temperature}")
        if audio is not None:
            synth = _fluidsynth()  # refuse before composing anything
            if not str(audio).lower().endswith(".wav"):
                raise UserError(f"--audio {audio}: expected a .wav file name")
        prompt_roll = None
        if prompt:
            pieces = read_music(run.config, prompt, say)
            prompt_roll = pieces[0].roll
            if len(pieces) > 1 and say:
                say(f"--prompt {prompt}: {len(pieces)} pieces; continuing the first ({pieces[0].name})")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
            if say:
                say(f"seed {seed} (give --seed {seed} to compose the same again)")
        roll = compose_roll(run, steps, prompt_roll, temperature, seed)
        if kind == ".json":
            atomic_write(out, roll_to_json([roll]))
        else:
            atomic_write(out, roll_to_midi(roll, o.frames_per_beat, o.tempo, o.program))
        shown = 0 if prompt_roll is None else len(prompt_roll)
        result = {"out": str(out), "frames": len(roll), "prompt_frames": shown, "composed_frames": steps,
                  "seed": seed, "notes_sounding": int(roll.sum())}
        if plot:
            viz.plot_piano_roll(plot, roll, o.frames_per_beat, LOWEST, shown,
                                title=f"{Path(out).name}: {steps} frames composed, seed {seed}")
            result["plot"] = str(plot)
        if audio is not None:
            midi = roll_to_midi(roll, o.frames_per_beat, o.tempo, o.program)
            render_audio(midi, audio, *synth)
            result["audio"] = str(audio)
        return result

    def encoder_sequences(self, run: LoadedRun, data_path: str | Path) -> tuple[Any, list[Any], Any]:
        """Every piece of the file (each step labelled by the frame it reads); the loss is the last frame's
        negative log-likelihood given the frames before it."""
        from rnnkit.diagnostics import InspectSequence

        pieces = read_music(run.config, data_path, _warn)
        found = [InspectSequence({"rolls": torch.from_numpy(p.roll.astype(np.float32))[None]},
                                 ["start"] + [str(t) for t in range(len(p.roll) - 1)]) for p in pieces]

        def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            rolls = batch["rolls"]  # (1, T, 88)
            features, _ = run.model.time_features(rolls)
            previous = rolls[:, -2] if rolls.shape[1] > 1 else torch.zeros_like(rolls[:, -1])
            logits = run.model.frame_logits(features[:, -1], previous, rolls[:, -1])
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, rolls[:, -1], reduction="sum")

        return run.model.rnn, found, loss


TASK = MusicTask()


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _warn(line: str) -> None:
    import sys

    print(f"rnnkit: warning: {line}", file=sys.stderr)


def _decoding(run: LoadedRun, beam: int = 1) -> str:
    if run.config.options.output == "independent":
        return "each key above 0.5"
    return "greedy key by key" if beam == 1 else f"beam {beam} key by key"


def _check_number(name: str, value: Any, kind: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise UserError(f"{name}: expected {what} in {low}..{high}; got {value!r}")


def compose_roll(run: LoadedRun, steps: int, prompt: np.ndarray | None, temperature: float, seed: int) -> np.ndarray:
    """The prompt (T0, 88) followed by `steps` composed frames, as a (T0 + steps, 88) uint8 roll.

    Sampling draws from a generator seeded with `seed` on the CPU, so a seed gives the same music on any
    machine with the same weights.
    """
    generator = torch.Generator().manual_seed(int(seed))
    prompt_t = None if prompt is None else torch.from_numpy(np.asarray(prompt, dtype=np.float32))
    with torch.no_grad():
        frames = run.model.generate(steps, prompt_t, temperature, generator).cpu().numpy().astype(np.uint8)
    return frames if prompt is None else np.concatenate([np.asarray(prompt, dtype=np.uint8), frames])


def _fluidsynth() -> tuple[str, str]:
    """The FluidSynth program and a General MIDI soundfont, or a UserError saying what to install."""
    program = shutil.which("fluidsynth")
    soundfont = os.environ.get("RNNKIT_SOUNDFONT") or next((s for s in SOUNDFONTS if Path(s).exists()), None)
    missing = []
    if program is None:
        missing.append("the fluidsynth program")
    if soundfont is None or not Path(soundfont).exists():
        missing.append(f"a General MIDI soundfont ({soundfont or SOUNDFONTS[0]})")
    if missing:
        raise UserError(f"--audio: {' and '.join(missing)} not installed; on Debian or Ubuntu: apt-get install "
                        "fluidsynth fluid-soundfont-gm (or set RNNKIT_SOUNDFONT to a .sf2 file), or drop --audio")
    return program, soundfont


def render_audio(midi: bytes, path: str | Path, program: str, soundfont: str, sample_rate: int = 44100) -> None:
    """Render MIDI bytes to a WAV file with FluidSynth and a soundfont."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        source.write_bytes(midi)
        done = subprocess.run([program, "-ni", "-q", "-F", str(target), "-r", str(sample_rate), soundfont,
                               str(source)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not target.exists():
            raise UserError(f"--audio: fluidsynth failed ({done.returncode}): "
                            f"{(done.stderr or done.stdout).strip()[-300:]}")
        atomic_write(path, target.read_bytes())

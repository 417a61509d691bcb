"""Music as piano rolls: reading MIDI, MusicXML and piano-roll JSON, writing MIDI and JSON.

What is here: `Piece` (a name and a (T, 88) 0/1 piano roll over the piano's keys, MIDI 21..108),
`read_pieces` (a file or a folder, recursively, of any of the formats below) and the writers
`roll_to_midi` and `roll_to_json`.

* MIDI (`.mid`, `.midi`) is read with pretty_midi. Every track but the drums is merged onto the keyboard.
  The grid has `frames_per_beat` frames per beat, a beat being a quarter note (MIDI's own unit of time),
  so tempo changes move the frames in seconds with the music, and time-signature changes (which move bar
  lines, not quarter notes) leave the grid on the beat. A note sounds from the frame nearest its start to
  the frame nearest its end (at least one frame).
* MusicXML (`.musicxml`, `.mxl`, `.xml`) is read with music21 (imported only then), on the same grid.
* Piano-roll JSON: a list of pieces, each a list of frames, each a list of the MIDI pitches sounding.

A file that cannot be read, a piece with no notes or a pitch off the keyboard is a one-line UserError
naming the file; inside a folder such files are skipped and counted instead, and an empty folder is an
error. What is not here: the model and the task (models/music.py, tasks/music.py).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit.config import UserError

LOWEST = 21  # A0, the piano's lowest key
N_KEYS = 88  # A0..C8 (MIDI 21..108)
MIDI_SUFFIXES = (".mid", ".midi")
MUSICXML_SUFFIXES = (".musicxml", ".mxl", ".xml")
JSON_SUFFIXES = (".json",)
TICKS_PER_BEAT = 480  # of the MIDI files written


@dataclass
class Piece:
    """One piece of music: where it came from and its piano roll (T, 88) uint8, column 0 = MIDI 21."""

    name: str
    roll: np.ndarray


@dataclass
class Reading:
    """The pieces read from a path, and the files of a folder that were skipped (with the reason)."""

    pieces: list[Piece]
    skipped: list[str]


def pitch_name(pitch: int) -> str:
    names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    return f"{names[pitch % 12]}{pitch // 12 - 1}"


def _key(pitch: int, where: str) -> int:
    if not LOWEST <= pitch < LOWEST + N_KEYS:
        raise UserError(f"{where}: pitch {pitch} ({pitch_name(pitch)}) is outside the piano's keyboard; expected "
                        f"MIDI {LOWEST}..{LOWEST + N_KEYS - 1} (A0..C8)")
    return pitch - LOWEST


def _check_grid(frames_per_beat: int) -> None:
    if not isinstance(frames_per_beat, int) or frames_per_beat < 1:
        raise UserError(f"--frames-per-beat: expected an integer >= 1; got {frames_per_beat!r}")


def _roll_from_notes(notes: list[tuple[float, float, int]], path: Path, frames_per_beat: int) -> np.ndarray:
    """A roll from (start beat, end beat, pitch) triples; refuses pitches off the keyboard and silence."""
    if not notes:
        raise UserError(f"{path}: no notes (drum tracks are not read); expected a piece with pitched notes")
    spans = []
    for start, end, pitch in notes:
        key = _key(pitch, f"{path}: the note at beat {start:g}")
        on = int(round(start * frames_per_beat))
        off = max(int(round(end * frames_per_beat)), on + 1)
        spans.append((on, off, key))
    roll = np.zeros((max(off for _, off, _ in spans), N_KEYS), dtype=np.uint8)
    for on, off, key in spans:
        roll[on:off, key] = 1
    return roll


def read_midi(path: str | Path, frames_per_beat: int) -> np.ndarray:
    """A MIDI file's piano roll (T, 88): every track but the drums, `frames_per_beat` frames per quarter note."""
    import pretty_midi

    path = Path(path)
    _check_grid(frames_per_beat)
    try:
        midi = pretty_midi.PrettyMIDI(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:  # the library raises many kinds on a file that is not MIDI
        raise UserError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e}); expected a standard "
                        "MIDI file (.mid)") from None
    resolution = float(midi.resolution)
    notes = []
    for instrument in midi.instruments:
        if instrument.is_drum:
            continue
        for n in instrument.notes:
            # back to ticks, which count quarter notes whatever the tempo
            start, end = midi.time_to_tick(n.start) / resolution, midi.time_to_tick(n.end) / resolution
            notes.append((start, end, int(n.pitch)))
    return _roll_from_notes(notes, path, frames_per_beat)


def read_musicxml(path: str | Path, frames_per_beat: int) -> np.ndarray:
    """A MusicXML file's piano roll (T, 88) on the same grid (music21 reads it)."""
    path = Path(path)
    _check_grid(frames_per_beat)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        import music21
    except ImportError:
        raise UserError(f"{path}: reading MusicXML needs music21; pip install music21") from None
    try:
        score = music21.converter.parse(str(path), format="musicxml")
    except Exception as e:  # music21 raises many kinds on a file that is not MusicXML
        raise UserError(f"{path}: not a readable MusicXML file ({type(e).__name__}: {e})") from None
    notes = []
    for element in score.flatten().notes:
        start = float(element.offset)
        end = start + float(element.quarterLength)
        for p in getattr(element, "pitches", ()):  # a note has one pitch, a chord several; unpitched: none
            notes.append((start, end, int(p.midi)))
    return _roll_from_notes(notes, path, frames_per_beat)


def read_roll_json(path: str | Path) -> list[Piece]:
    """Pieces from a piano-roll JSON file: a list of pieces, each a list of frames of MIDI pitches."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); expected a list of pieces, each a list of frames, each a "
                        "list of MIDI pitches") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a non-empty list of pieces (each a list of frames, each a list of MIDI "
                        f"pitches); got {type(data).__name__}{' (empty)' if data == [] else ''}")
    pieces = []
    for i, piece in enumerate(data):
        where = f"{path}: piece {i}"
        if not isinstance(piece, list) or not piece:
            raise UserError(f"{where}: expected a non-empty list of frames; got {json.dumps(piece)[:40]}")
        roll = np.zeros((len(piece), N_KEYS), dtype=np.uint8)
        for t, frame in enumerate(piece):
            if not isinstance(frame, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in frame):
                raise UserError(f"{where}, frame {t}: expected a list of MIDI pitches (integers); got "
                                f"{json.dumps(frame)[:40]}")
            for p in frame:
                roll[t, _key(p, f"{where}, frame {t}")] = 1
        if not roll.any():
            raise UserError(f"{where}: no notes in its {len(piece)} frames")
        pieces.append(Piece(f"{path.name}#{i}", roll))
    return pieces


def _read_file(path: Path, frames_per_beat: int) -> list[Piece]:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return read_roll_json(path)
    if suffix in MUSICXML_SUFFIXES:
        return [Piece(path.name, read_musicxml(path, frames_per_beat))]
    if suffix in MIDI_SUFFIXES:
        return [Piece(path.name, read_midi(path, frames_per_beat))]
    raise UserError(f"{path}: unknown kind of file; expected MIDI ({', '.join(MIDI_SUFFIXES)}), MusicXML "
                    f"({', '.join(MUSICXML_SUFFIXES)}), piano-roll JSON (.json) or a folder of them")


def read_pieces(path: str | Path, frames_per_beat: int) -> Reading:
    """Every piece of a file or of a folder (recursively: MIDI, MusicXML and JSON files).

    In a folder, a file that cannot be used is skipped and listed in `Reading.skipped`; a folder with no
    usable file is an error.
    """
    path = Path(path)
    _check_grid(frames_per_beat)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if not path.is_dir():
        return Reading(_read_file(path, frames_per_beat), [])
    suffixes = MIDI_SUFFIXES + MUSICXML_SUFFIXES + JSON_SUFFIXES
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise UserError(f"{path}: the folder has no MIDI, MusicXML or piano-roll JSON file")
    pieces, skipped = [], []
    for f in files:
        try:
            pieces.extend(_read_file(f, frames_per_beat))
        except UserError as e:
            skipped.append(str(e))
    if not pieces:
        raise UserError(f"{path}: none of its {len(files)} music files could be read; the first: {skipped[0]}")
    return Reading(pieces, skipped)


# ------------------------------------------------------------------------------------------- writing


def roll_to_midi(roll: np.ndarray, frames_per_beat: int, tempo: float = 120.0, program: int = 0,
                 velocity: int = 80) -> bytes:
    """A standard MIDI file (type 1) of a piano roll (T, 88): one note per run of sounding frames.

    The bytes depend only on the arguments (no time stamps or names from the machine).
    """
    import mido

    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != N_KEYS:
        raise ValueError(f"roll: expected shape (T, {N_KEYS}); got {roll.shape}")
    if TICKS_PER_BEAT % frames_per_beat:
        ticks = [round(t * TICKS_PER_BEAT / frames_per_beat) for t in range(len(roll) + 1)]
    else:
        ticks = [t * TICKS_PER_BEAT // frames_per_beat for t in range(len(roll) + 1)]
    events = []  # (tick, order, message): note-offs before note-ons at the same tick
    padded = np.concatenate([np.zeros((1, N_KEYS), np.uint8), roll.astype(np.uint8), np.zeros((1, N_KEYS),
                                                                                               np.uint8)])
    change = np.diff(padded.astype(np.int8), axis=0)  # (T+1, 88): +1 onset, -1 release at frame t
    for t, key in zip(*np.nonzero(change), strict=True):
        on = change[t, key] > 0
        events.append((ticks[t], 1 if on else 0, int(key),
                       mido.Message("note_on" if on else "note_off", note=int(key) + LOWEST,
                                    velocity=velocity if on else 0, channel=0)))
    events.sort(key=lambda e: e[:3])
    meta = mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0),
        mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0),
        mido.MetaMessage("end_of_track", time=0),
    ])
    track = mido.MidiTrack([mido.Message("program_change", program=program, channel=0, time=0)])
    now = 0
    for tick, _, _, message in events:
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(ticks[-1] - now, 0)))
    out = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    out.tracks.extend([meta, track])
    buf = io.BytesIO()
    out.save(file=buf)
    return buf.getvalue()


def roll_to_frames(roll: np.ndarray) -> list[list[int]]:
    """A piano roll (T, 88) as a list of frames of MIDI pitches (the JSON form)."""
    return [[int(k) + LOWEST for k in np.flatnonzero(frame)] for frame in np.asarray(roll)]


def roll_to_json(rolls: list[np.ndarray]) -> str:
    """Piano-roll JSON of pieces: one piece per line inside the list."""
    return "[\n" + ",\n".join(json.dumps(roll_to_frames(r)) for r in rolls) + "\n]\n"


def frames_to_roll(frames: Any, where: str) -> np.ndarray:
    """A list of frames of MIDI pitches (the JSON form) as a roll (T, 88); `where` names it in messages."""
    if not isinstance(frames, list):
        raise UserError(f"{where}: expected a list of frames, each a list of MIDI pitches; got "
                        f"{type(frames).__name__}")
    roll = np.zeros((len(frames), N_KEYS), dtype=np.uint8)
    for t, frame in enumerate(frames):
        if not isinstance(frame, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in frame):
            raise UserError(f"{where}, frame {t}: expected a list of MIDI pitches (integers)")
        for p in frame:
            roll[t, _key(p, f"{where}, frame {t}")] = 1
    return roll

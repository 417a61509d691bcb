"""The `rnnkit` command: one entry point, its subcommands listed in one table (`COMMANDS`).

What is here: argument parsing (training options come from the config dataclasses, so the TOML file
and the command line share names and checks), turning user mistakes into one-line errors, and the
handlers, each a thin call into `rnnkit.tasks`. What is not: any training, data or model logic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnkit.config import RunConfig, TrainingError, UserError, default_of, load_toml, sections_for

# ----------------------------------------------------------------------------- option building


def _field_type(cls: type, name: str) -> Any:
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _add_config_options(parser: argparse.ArgumentParser, task: str) -> None:
    """One option per config field of the task's sections; defaults are None so that only what the user
    typed overrides the TOML file."""
    for section, cls in sections_for(task).items():
        group = parser.add_argument_group(f"{section} options")
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            kind = _field_type(cls, f.name)
            default = default_of(task, section, f.name)
            help_text = f.metadata.get("help", "") + f" (default: {default})"
            dest = f"{section}.{f.name}"
            if f.name == "fused":
                group.add_argument(flag, dest=dest, choices=["auto", "true", "false"], default=None,
                                   help=help_text.replace("(default: None)", "(default: auto)"))
            elif kind is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                   help=f.metadata.get("help", "") + f" (default: {'on' if default else 'off'})")
            elif typing.get_origin(kind) is list:
                group.add_argument(flag, dest=dest, nargs="+", default=None, metavar=f.name.upper(), help=help_text)
            else:
                group.add_argument(flag, dest=dest, type=kind, default=None, choices=f.metadata.get("choices"),
                                   metavar=None if f.metadata.get("choices") else f.name.upper(), help=help_text)


def run_config_from_args(task: str, args: argparse.Namespace) -> RunConfig:
    """The task's defaults, then the TOML file (--config), then the command line."""
    values: dict[str, dict[str, Any]] = {name: {} for name in sections_for(task)}
    if getattr(args, "config", None):
        values = load_toml(args.config, task)
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            if name == "fused":
                value = {"auto": None, "true": True, "false": False}[value]
            values[section][name] = value
    return RunConfig.from_dict({"task": task, **values}, source=str(getattr(args, "config", None) or "options"))


# ------------------------------------------------------------------------------------- handlers


def _task_options(args: argparse.Namespace, table: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The task-specific options the user gave (those not None), by keyword name."""
    given = {}
    for flag, _ in table:
        name = flag.lstrip("-").replace("-", "_")
        value = getattr(args, name, None)
        if value is not None and value is not False:
            given[name] = value
    return given


def _text_generator(run_dir: str, verb: str, hint: str = "") -> Any:
    """The loaded run for generate/complete, refusing runs of tasks that do not generate text."""
    from rnnkit.tasks import runner

    task = runner.task_of(run_dir)
    if not task.generates_text:
        raise UserError(f"{run_dir}: {verb} needs a language model ('lm') run{hint}")
    return runner.load(run_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from rnnkit.tasks import get_task

    get_task(args.task)  # refuses tasks this installation lacks
    cfg = run_config_from_args(args.task, args)
    from rnnkit import distributed
    from rnnkit.tasks.training import train

    # Under torchrun, training joins the process group first thing (train.open_run).
    result = train(cfg, args.train, args.out, valid_path=args.valid, test_path=args.test, resume=args.resume)
    if distributed.is_main():
        print(json.dumps(result, indent=2))
    distributed.close()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rnnkit.tasks import runner

    figures = runner.evaluate(args.run_dir, args.data, **_task_options(args, EVALUATE_OPTIONS))
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):  # rows (recommend's buckets)
                print(f"{k:>20}")
                for row in v:
                    print(" " * 22 + "  ".join(f"{name} {x if isinstance(x, str) else _figure_text(x)}"
                                               for name, x in row.items()))
                continue
            text = _figure_text(v)
            print(f"{k:>20}  {text}".rstrip())
            if isinstance(v, dict) and not text:  # groups of figures (forecast baselines): a line per group
                for name, member in v.items():
                    print(f"{name:>24}  {_figure_text(member) or json.dumps(member)}")
    return 0


def _figure_text(v: Any) -> str:
    """A figure for the plain-text report: numbers to four decimals, counts as they are, a dict of numbers as
    'name value' pairs on one line (an empty string for other dicts, whose members get lines of their own)."""
    if isinstance(v, bool) or not isinstance(v, int | float | dict):
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    if all(isinstance(x, int | float) and not isinstance(x, bool) for x in v.values()):
        return "  ".join(f"{name} {_figure_text(x)}" for name, x in v.items())
    return ""


def cmd_predict(args: argparse.Namespace) -> int:
    from rnnkit.tasks import runner

    runner.predict(args.run_dir, args.input, args.output, **_task_options(args, PREDICT_OPTIONS))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from rnnkit.tasks import runner

    task = runner.task_of(args.run_dir)
    if task.compose is not None:
        return _compose(task, args)
    wrong = [flag for flag, _ in GENERATE_OPTIONS if getattr(args, flag[2:].replace("-", "_")) is not None]
    if wrong:
        raise UserError(f"{', '.join(wrong)}: not an option for {task.name} runs")
    if args.max_tokens is None:
        args.max_tokens = 200
    if args.beam is None:
        args.beam = 1
    from rnnkit.tasks import lm

    model = _text_generator(args.run_dir, "generate", "; other runs answer 'rnnkit predict'")
    # The prompt goes out with the first generated piece, so that a refused request (--max-tokens 0,
    # --top-p 2) writes nothing to stdout.
    pending = [args.prompt]

    def show(piece: str) -> None:
        sys.stdout.write(pending.pop() + piece if pending else piece)
        sys.stdout.flush()

    lm.generate(model, args.prompt, args.max_tokens, args.temperature, args.top_k, args.top_p, args.beam,
                args.seed, on_text=show)
    sys.stdout.write((pending.pop() if pending else "") + "\n")
    return 0


def _compose(task: Any, args: argparse.Namespace) -> int:
    """`generate` for a task that writes a file (music): its options, then the task's `compose`."""
    from rnnkit.tasks import runner

    wrong = [flag for flag, value in (("--max-tokens", args.max_tokens), ("--top-k", args.top_k),
                                      ("--top-p", args.top_p), ("--beam", args.beam)) if value is not None]
    if wrong:
        raise UserError(f"{', '.join(wrong)}: not an option for {task.name} runs")
    options = _task_options(args, GENERATE_OPTIONS)
    result = task.compose(runner.load(args.run_dir), prompt=args.prompt or None, temperature=args.temperature,
                          seed=args.seed, say=lambda line: print(line, file=sys.stderr), **options)
    print(json.dumps(result))
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    from rnnkit.tasks import lm

    results = lm.complete(_text_generator(args.run_dir, "complete"), args.prefix, args.n)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['probability']:7.2%}  {args.prefix}{r['completion']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import read_run_config

    read_run_config(args.run_dir)  # a clear error before the server starts
    if not 0 < args.port < 65536:
        raise UserError(f"--port: expected a port number in 1..65535; got {args.port}")
    from rnnkit.serve.config import ServeConfig

    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    try:
        from rnnkit.serve import serve
    except ImportError as e:
        raise UserError(f"serve needs FastAPI and uvicorn ({e}); pip install fastapi uvicorn") from None
    serve(args.run_dir, host=args.host, port=args.port, config=config)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rnnkit.export import export_run

    report = export_run(args.run_dir, args.format, args.out, check=not args.no_check)
    print(json.dumps(report, indent=2))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.run_dir) / "inspect")
    from rnnkit.diagnostics import inspect_run

    figures = inspect_run(args.run_dir, args.data, out, steps=args.steps, rows=args.rows)
    print(json.dumps(figures, indent=2))
    print(f"plots in {out}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rnnkit.demo import run_demo

    run_demo(out=args.out, minutes=args.minutes, seed=args.seed)
    return 0


# -------------------------------------------------------------------------------------- the table


def _train_args(p: argparse.ArgumentParser) -> None:
    from rnnkit.tasks import REGISTRY, available_tasks, get_task

    names = list(REGISTRY)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True,
                             help="what to train: " + ", ".join(names) + " ('rnnkit train TASK --help' lists its "
                                  "options)")
    present = available_tasks()
    for task in names:
        # a task missing from this installation still parses, so that training it says so plainly
        summary = get_task(task).summary if task in present else "not available in this installation"
        t = tasks.add_parser(task, help=summary, description=f"Train a {summary}.")
        t.add_argument("--train", required=True, metavar="PATH", help="training data file")
        t.add_argument("--valid", metavar="PATH", help="validation data (default: hold out the end of --train)")
        t.add_argument("--test", metavar="PATH", help="test data, evaluated once at the end")
        t.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
        t.add_argument("--config", metavar="FILE.toml", help="options from a TOML file; the command line wins")
        t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        _add_config_options(t, task)


# The search of transcribe runs, for both evaluate and predict.
SPEECH_SEARCH_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--lm", {"metavar": "RUN", "help": "transcribe: fuse a language-model run into the beam search"}),
    ("--lm-weight", {"type": float, "metavar": "W", "help": "transcribe: weight of --lm (default: 0.5)"}),
    ("--lexicon", {"metavar": "FILE", "help": "transcribe: only words of this list (one per line)"}),
    ("--unit-bonus", {"type": float, "metavar": "B", "help": "transcribe: score added per output unit in the "
                                                             "beam search (default: 0)"}),
]

# Task-specific options of `evaluate` and `predict`: (flag, argparse keywords). Each reaches the task's
# function as a keyword argument when given; a task that does not take it refuses it by name.
EVALUATE_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--plot", {"metavar": "PNG", "help": "classify: the confusion matrix as PNG; forecast: forecasts against "
                                          "the truth"}),
    ("--beam", {"type": int, "metavar": "N", "help": "seq2seq, transcribe: beam width (default: greedy); music: "
                                                     "beam over the keys of a frame for frame_accuracy (default: "
                                                     "greedy)"}),
    *SPEECH_SEARCH_OPTIONS,
    ("--stride", {"type": int, "metavar": "N", "help": "forecast: steps between forecast origins "
                                                       "(default: the horizon)"}),
    ("--season", {"type": int, "metavar": "N", "help": "forecast: season length in steps for seasonal-naive "
                                                       "and MASE (default: inferred from the time step)"}),
    ("--seen-rows", {"type": int, "metavar": "N", "help": "forecast runs without a time column: forecasts start "
                                                         "after the first N rows of --data, taken as seen in "
                                                         "training (default: the first rows that repeat, value "
                                                         "for value, rows seen in training; never fewer)"}),
    ("--allow-repeats", {"action": "store_true", "default": None,
                         "help": "recommend: rank items the user already has too (default: they are excluded)"}),
    ("--sample-seed", {"type": int, "metavar": "S", "help": "recommend: seed of the sampled protocol's 100 "
                                                           "negatives per user (default: 0)"}),
]

PREDICT_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--format", {"metavar": "FORMAT", "help": "output format: classify csv|jsonl (default: from --output's "
                                               "extension, else csv); tag conll|jsonl (spans with offsets); "
                                               "transcribe text|jsonl; music csv|jsonl; recommend text|json (with "
                                               "scores)"}),
    ("--beam", {"type": int, "metavar": "N", "help": "seq2seq, transcribe: beam width (default: greedy)"}),
    *SPEECH_SEARCH_OPTIONS,
    ("--attention-plot", {"metavar": "DIR", "help": "seq2seq: write an attention heatmap per input into DIR"}),
    ("--plot", {"metavar": "PNG", "help": "forecast: history, forecast and interval as PNG"}),
    ("--anomalies", {"action": "store_true", "default": None,
                     "help": "forecast: flag points whose one-step-ahead residual passes the learned threshold"}),
    ("--top-k", {"type": int, "metavar": "K", "help": "recommend: items per history (default: 10)"}),
    ("--allow-repeats", {"action": "store_true", "default": None,
                         "help": "recommend: recommend items the history already holds"}),
]


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="PATH", help="data to evaluate on")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    group = p.add_argument_group("task options")
    for flag, kwargs in EVALUATE_OPTIONS:
        group.add_argument(flag, **kwargs)


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--input", default="-", metavar="PATH", help="inputs, one per line (default: stdin)")
    p.add_argument("--output", default="-", metavar="PATH", help="where to write (default: stdout)")
    group = p.add_argument_group("task options")
    for flag, kwargs in PREDICT_OPTIONS:
        group.add_argument(flag, **kwargs)


# Options of `generate` for tasks that compose a file (music), passed to `Task.compose` when given.
GENERATE_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--out", {"metavar": "FILE", "help": "music: the MIDI file to write (.mid), or piano-roll JSON (.json)"}),
    ("--steps", {"type": int, "metavar": "N", "help": "music: frames to compose (default: 32 beats)"}),
    ("--plot", {"metavar": "PNG", "help": "music: a picture of the piano roll"}),
    ("--audio", {"metavar": "WAV", "help": "music: render audio through FluidSynth and a General MIDI soundfont"}),
]


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new line); music: a MIDI, "
                                                "MusicXML or piano-roll JSON file to continue")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="sampling temperature; 0 is greedy (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="sample within the nucleus of mass P")
    p.add_argument("--beam", type=int, default=None, metavar="N",
                   help="beam search with N beams instead of sampling (default: 1)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible sampling")
    group = p.add_argument_group("music options")
    for flag, kwargs in GENERATE_OPTIONS:
        group.add_argument(flag, **kwargs)


def _complete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prefix", required=True, metavar="TEXT", help="what has been typed so far")
    p.add_argument("--n", type=int, default=5, metavar="N", help="how many completions (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON list")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    from rnnkit.serve.config import ServeConfig

    for f in dataclasses.fields(ServeConfig):
        flag, kind = "--" + f.name.replace("_", "-"), _field_type(ServeConfig, f.name)
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})")
        else:
            p.add_argument(flag, type=kind, default=f.default, metavar=f.name.split("_")[-1].upper(),
                           help=f"{f.metadata['help']} (default: {f.default:,g})")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=["onnx", "pt2"],
                   help="onnx (run with onnxruntime and others) or pt2 (a torch.export program)")
    p.add_argument("--out", metavar="DIR", help="folder for the graphs (default: RUN_DIR/export)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported graphs against PyTorch on fresh input sizes")


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="PATH", help="data to read sequences from")
    p.add_argument("--out", metavar="DIR", help="where the plots and inspect.json go (default: RUN_DIR/inspect)")
    p.add_argument("--steps", type=int, default=100, metavar="T",
                   help="language models: steps to backpropagate through (default: 100)")
    p.add_argument("--rows", type=int, default=16, metavar="N",
                   help="sequences averaged over (the longest of the data; forecast: windows spread over it); "
                        "seq2seq: also the attention maps drawn (default: 16)")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="where to write the run (default: a new temp folder)")
    p.add_argument("--minutes", type=float, default=2.0, help="training time (default: 2)")
    p.add_argument("--seed", type=int, default=0)


# name -> (help, argument builder, handler)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train a model for a task", _train_args, cmd_train),
    "evaluate": ("score a trained run on a data file", _evaluate_args, cmd_evaluate),
    "predict": ("apply a trained run to inputs", _predict_args, cmd_predict),
    "generate": ("write text with a language model, or music with a music run", _generate_args, cmd_generate),
    "complete": ("complete the word being typed", _complete_args, cmd_complete),
    "serve": ("serve a run over HTTP: JSON API and a web page", _serve_args, cmd_serve),
    "export": ("export a run to ONNX or torch.export, with a parity check", _export_args, cmd_export),
    "inspect": ("gradient flow through time, activations and clipping of a run", _inspect_args, cmd_inspect),
    "demo": ("train a small character model on a built-in corpus and show what it learned", _demo_args, cmd_demo),
}


class _VersionAction(argparse.Action):
    """--version: rnnkit's and torch's versions, and which kernels run (found, or built, to say so)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import torch

        from rnnkit import __version__
        from rnnkit.kernels import native

        print(f"rnnkit {__version__}\ntorch {torch.__version__}\nkernels: {native.status()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkit", description="Recurrent neural networks on PyTorch.")
    parser.add_argument("--version", action=_VersionAction, help="show the versions and which kernels run, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(handler=handler)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rnnkit: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.handler(args)
    except UserError as e:
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"rnnkit: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

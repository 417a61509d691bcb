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
from typing import Any

from rnnkit.config import SECTIONS, RunConfig, UserError, load_toml

TASKS = ("lm", "classify", "tag", "seq2seq", "forecast")
AVAILABLE_TASKS = ("lm",)


# ----------------------------------------------------------------------------- option building


def _field_type(cls: type, name: str) -> Any:
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field; defaults are None so that only what the user typed overrides TOML."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} options")
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            kind = _field_type(cls, f.name)
            default = f.default
            help_text = f.metadata.get("help", "") + f" (default: {default})"
            dest = f"{section}.{f.name}"
            if f.name == "fused":
                group.add_argument(flag, dest=dest, choices=["auto", "true", "false"], default=None,
                                   help=help_text.replace("(default: None)", "(default: auto)"))
            elif kind is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                   help=f.metadata.get("help", "") + f" (default: {'on' if default else 'off'})")
            else:
                group.add_argument(flag, dest=dest, type=kind, default=None, choices=f.metadata.get("choices"),
                                   metavar=None if f.metadata.get("choices") else f.name.upper(), help=help_text)


def run_config_from_args(task: str, args: argparse.Namespace) -> RunConfig:
    """Defaults, then the TOML file (--config), then the command line."""
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if getattr(args, "config", None):
        values = load_toml(args.config)
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            if name == "fused":
                value = {"auto": None, "true": True, "false": False}[value]
            values[section][name] = value
    return RunConfig.from_dict({"task": task, **values}, source=str(getattr(args, "config", None) or "options"))


# ------------------------------------------------------------------------------------- handlers


def _need_task(task: str) -> None:
    if task not in AVAILABLE_TASKS:
        raise UserError(f"task '{task}' is not available in this version of rnnkit; available: "
                        f"{', '.join(AVAILABLE_TASKS)}")


def _task_of(run_dir: str) -> str:
    from rnnkit.checkpoint import read_run_config

    task = read_run_config(run_dir)["task"]
    _need_task(task)
    return task


def cmd_train(args: argparse.Namespace) -> int:
    _need_task(args.task)
    cfg = run_config_from_args(args.task, args)
    from rnnkit.tasks import lm

    result = lm.train(cfg, args.train, args.out, valid_path=args.valid, test_path=args.test, resume=args.resume)
    print(json.dumps(result, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _task_of(args.run_dir)
    from rnnkit.tasks import lm

    figures = lm.evaluate(args.run_dir, args.data)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>20}  {v:.4f}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if _task_of(args.run_dir) != "lm":
        raise UserError(f"{args.run_dir}: generate needs a language model ('lm') run")
    from rnnkit.tasks import lm

    model = lm.load(args.run_dir)
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


def cmd_complete(args: argparse.Namespace) -> int:
    if _task_of(args.run_dir) != "lm":
        raise UserError(f"{args.run_dir}: complete needs a language model ('lm') run")
    from rnnkit.tasks import lm

    results = lm.complete(args.run_dir, args.prefix, args.n)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['probability']:7.2%}  {args.prefix}{r['completion']}")
    return 0


def _not_yet(what: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise UserError(f"'{what}' is not available in this version of rnnkit yet")

    return handler


def cmd_demo(args: argparse.Namespace) -> int:
    from rnnkit.demo import run_demo

    run_demo(out=args.out, minutes=args.minutes, seed=args.seed)
    return 0


# -------------------------------------------------------------------------------------- the table


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=TASKS, help="what to train: " + ", ".join(TASKS))
    p.add_argument("--train", required=True, metavar="PATH", help="training data file")
    p.add_argument("--valid", metavar="PATH", help="validation data (default: hold out the end of --train)")
    p.add_argument("--test", metavar="PATH", help="test data, evaluated once at the end")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    p.add_argument("--config", metavar="FILE.toml", help="options from a TOML file; the command line wins")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_config_options(p)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="PATH", help="data to evaluate on")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--input", default="-", metavar="PATH", help="inputs, one per line (default: stdin)")
    p.add_argument("--output", default="-", metavar="PATH", help="where to write (default: stdout)")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new line)")
    p.add_argument("--max-tokens", type=int, default=200, metavar="N", help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="sampling temperature; 0 is greedy (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="sample within the nucleus of mass P")
    p.add_argument("--beam", type=int, default=1, metavar="N", help="beam search with N beams instead of sampling")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible sampling")


def _complete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prefix", required=True, metavar="TEXT", help="what has been typed so far")
    p.add_argument("--n", type=int, default=5, metavar="N", help="how many completions (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON list")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=["onnx", "pt2"])
    p.add_argument("--out", metavar="PATH")


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="PATH")
    p.add_argument("--out", metavar="DIR")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="where to write the run (default: a new temp folder)")
    p.add_argument("--minutes", type=float, default=2.0, help="training time (default: 2)")
    p.add_argument("--seed", type=int, default=0)


# name -> (help, argument builder, handler)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("train a model for a task", _train_args, cmd_train),
    "evaluate": ("score a trained run on a data file", _evaluate_args, cmd_evaluate),
    "predict": ("apply a trained run to inputs", _predict_args, _not_yet("predict")),
    "generate": ("write text with a language model", _generate_args, cmd_generate),
    "complete": ("complete the word being typed", _complete_args, cmd_complete),
    "serve": ("serve a run over HTTP", _serve_args, _not_yet("serve")),
    "export": ("export a run to ONNX or torch.export", _export_args, _not_yet("export")),
    "inspect": ("gradient flow and activations of a run", _inspect_args, _not_yet("inspect")),
    "demo": ("train a small character model on a built-in corpus and show what it learned", _demo_args, cmd_demo),
}


def build_parser() -> argparse.ArgumentParser:
    from rnnkit import __version__

    parser = argparse.ArgumentParser(prog="rnnkit", description="Recurrent neural networks on PyTorch.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
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
    from rnnkit.train import TrainingError

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

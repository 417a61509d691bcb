"""`rnnkit demo`: a character LSTM learns a built-in corpus in about two minutes and shows its work.

What is here: the demo's script (corpus, a sample before training, training, a sample after, autocomplete).
What is not: anything the demo does not reuse from the library: it runs the same code as
`rnnkit train lm`, `rnnkit generate` and `rnnkit complete`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from rnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnkit.data import build_tokenizer
from rnnkit.data.demo import demo_corpus
from rnnkit.tasks import lm, runner
from rnnkit.tasks.training import train

PROMPT = "The old fisherman"
PREFIXES = ["The old fisherman walked along the light", "When the sun went do", "my grandmother baked fresh ",
            "At dawn, the ferry cap"]


def _rule(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 66 - len(title)))


def run_demo(out: str | None = None, minutes: float = 2.0, seed: int = 0) -> Path:
    """Train the demo model into `out` (a new temporary folder by default) and print what it learned."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run_dir = Path(out) if out else Path(tempfile.mkdtemp(prefix="rnnkit-demo-"))
    text = demo_corpus(seed=seed)
    corpus = run_dir / "corpus.txt"
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus.write_text(text, encoding="utf-8")
    model_dir = run_dir / "run"
    print(f"rnnkit demo: a character-level LSTM language model on a built-in corpus "
          f"({len(text):,} characters, {len(set(text))} symbols), {minutes:g} minutes of training on "
          f"{torch.get_num_threads()} CPU thread(s).")
    print(f"corpus: {corpus}")
    print("first line: " + text.split("\n", 1)[0][:150] + " ...")

    cfg = RunConfig(
        task="lm",
        model=ModelConfig(cell="lstm", embedding_size=32, hidden_size=256, num_layers=1),
        data=DataConfig(tokenizer="char"),
        train=TrainConfig(epochs=100, max_minutes=minutes, batch_size=32, bptt=64, lr=4e-3, clip=1.0,
                          eval_every=200, scheduler="plateau", lr_patience=1, seed=seed, log_every=100),
    )

    _rule("before training (random weights)")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer("char", text)
    untrained = lm.LoadedLM(model=lm.build_model(cfg, tokenizer.vocab_size).eval(), config=cfg,
                            device=torch.device("cpu"), run_dir=model_dir, meta={}, tokenizer=tokenizer)
    sample = lm.generate(untrained, PROMPT, max_tokens=120, temperature=0.8, seed=seed)
    print(PROMPT + sample.replace("\n", " "))

    _rule("training")
    train(cfg, corpus, model_dir)

    _rule("after training: generate (temperature 0.7)")
    trained = runner.load(model_dir)
    sample = lm.generate(trained, PROMPT, max_tokens=240, temperature=0.7, seed=seed)
    print(PROMPT + sample.split("\n")[0])

    _rule("after training: complete the word being typed")
    for prefix in PREFIXES:
        found = lm.complete(trained, prefix, n=3)
        shown = ", ".join(f"{r['text']!r} {r['probability']:.0%}" for r in found)
        print(f"{prefix!r:48} -> {shown}")

    _rule("files")
    print(f"run directory: {model_dir}")
    print(f"training curves: {model_dir / 'curves.png'}")
    print(f"try: rnnkit generate {model_dir} --prompt 'When the fog' --temperature 0.5 --seed 1")
    print(f"     rnnkit complete {model_dir} --prefix 'the lightho'")
    print(f"     rnnkit serve {model_dir}    # then open http://127.0.0.1:8000/ and type")
    sys.stdout.flush()
    return model_dir

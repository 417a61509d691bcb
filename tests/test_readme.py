"""The README's two commands: CI runs exactly the test command, and the main job is `rnnkit demo`."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = _commands()[:2]
    assert demo.endswith("rnnkit demo") and "torch==2.13.0" in demo
    assert tests.endswith("python -m pytest") and "torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command():
    tests = _commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines()

"""The README and the docs: CI runs exactly the README's test command, the main job is `rnnkit demo`, the README
stays a front page whose links lead somewhere, and the docs' set-up commands are the README's."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT_BYTES = 25_000


def _commands(path: Path = ROOT / "README.md") -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = _commands()[:2]
    assert demo.endswith("rnnkit demo") and "torch==2.13.0" in demo
    assert tests.endswith("python -m pytest") and "torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command():
    tests = _commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines()


def test_ci_builds_the_docs_strictly():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^[^#\n]*mkdocs build --strict", ci, flags=re.M)


def test_readme_is_a_front_page():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move detail to docs/ (limit {README_LIMIT_BYTES})"


def test_docs_home_has_the_readme_set_up_commands():
    assert _commands(ROOT / "docs" / "index.md")[:2] == _commands()[:2]


def test_readme_links_lead_to_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:|#", link)]
    assert local, "the README links to no docs page"
    missing = [link for link in local if not (ROOT / link).is_file()]
    assert not missing, f"README.md links to files that do not exist: {missing}"

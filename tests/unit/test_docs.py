"""The README stays true: every setting is documented and CI runs its test command."""

from __future__ import annotations

from pathlib import Path

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_environment_variable_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    names = {str(field.validation_alias) for field in Settings.model_fields.values()}
    missing = sorted(name for name in names if f"| `{name}` |" not in readme)
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && .venv/bin/pytest" in readme
    assert ".venv/bin/pip install --quiet -e '.[test]'" in ci
    assert ci.rstrip().endswith(".venv/bin/pytest")

"""The README stays true: every setting and exit status is documented, CI runs its tests."""

from __future__ import annotations

import os
import re
from pathlib import Path

from shared.config import Settings
from shared.exit_status import ExitStatus

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


def test_the_readme_exit_status_table_is_the_code_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit statuses", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(EX_[A-Z]+)` \|", section, flags=re.MULTILINE)
    assert [(int(code), getattr(os, name)) for code, name in rows] == [
        (int(status), int(status)) for status in ExitStatus
    ]


def test_the_readme_lists_every_metric_the_code_defines() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from workers import metrics

    readme = (ROOT / "README.md").read_text()
    section = readme.split("- **Metrics.**", 1)[1].split("\n- **", 1)[0]
    listed = set(re.findall(r"`((?:reminders|dramatiq)_[a-z_]+)", section))
    defined = {
        metric._name + ("_total" if metric._type == "counter" else "")
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
    }
    # The API's /metrics builds its families from the broker at scrape time (api.metrics).
    api_source = (ROOT / "api" / "metrics.py").read_text()
    from_broker = set(re.findall(r'MetricFamily\(\s*"([a-z_]+)"', api_source))
    assert len(from_broker) == 2, from_broker
    defined |= from_broker

    assert defined <= listed, sorted(defined - listed)
    assert "REMINDERS_METRICS_PORT" in section and "off by default" in section

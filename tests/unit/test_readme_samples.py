"""The README's samples that need no lab are what the code prints now (tests/readme_samples.py)."""

from __future__ import annotations

import pytest

from tests import readme_samples

pytestmark = pytest.mark.nolab


@pytest.mark.parametrize(
    ("name", "record"),
    [("help", readme_samples.sample_help), ("deploy-help", readme_samples.sample_deploy_help)],
)
def test_the_readme_shows_what_the_command_prints(name: str, record: object) -> None:
    assert callable(record)
    held = readme_samples.recorded()
    assert set(held) >= {"help", "deploy-help", "preflight-terminal", "preflight-plain", "bench"}
    assert held[name] == record(), f"re-record: python -m tests.readme_samples {name}"

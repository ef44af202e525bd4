"""The scenarios' testinfra tests follow the suite's CI rule: with ``CI=true`` a skip fails unless
it is deliberate (tests/conftest.py). The lab/nolab markers do not apply here: every scenario
test needs its scenario's hosts."""

from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]

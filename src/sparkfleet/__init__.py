"""sparkfleet: provision NVIDIA DGX Spark hosts to serve one large model with vLLM.

The Python API over the project's playbooks::

    from sparkfleet import Fleet

    result = Fleet("inventory/spark").deploy(limit="spark-01")
    print(result.summary())

See :class:`Fleet` (operations), :class:`RunResult` / :class:`HostResult` (results) and
:mod:`sparkfleet.events` (progress events).
"""

from sparkfleet.errors import (
    FleetError,
    InventoryError,
    PlaybookNotFoundError,
    ProjectNotFoundError,
)
from sparkfleet.events import (
    AnsibleWarning,
    DownloadProgress,
    FleetEvent,
    HostTaskResult,
    HostTaskStarted,
    PlayStarted,
    RunStatusChanged,
    StopRequested,
    TaskRetry,
    TaskStarted,
    TaskStatus,
)
from sparkfleet.fleet import OPERATIONS, CancelToken, Fleet, Operation
from sparkfleet.inventory import InventorySource
from sparkfleet.project import Project
from sparkfleet.result import ExitCode, HealthResult, HostResult, RunResult

__version__ = "0.1.0"

__all__ = [
    "OPERATIONS",
    "AnsibleWarning",
    "CancelToken",
    "DownloadProgress",
    "ExitCode",
    "Fleet",
    "FleetError",
    "FleetEvent",
    "HealthResult",
    "HostResult",
    "HostTaskResult",
    "HostTaskStarted",
    "InventoryError",
    "InventorySource",
    "Operation",
    "PlayStarted",
    "PlaybookNotFoundError",
    "Project",
    "ProjectNotFoundError",
    "RunResult",
    "RunStatusChanged",
    "StopRequested",
    "TaskRetry",
    "TaskStarted",
    "TaskStatus",
    "__version__",
]

"""sparkfleet: provision NVIDIA DGX Spark hosts to serve one large model with vLLM.

The Python API over the project's playbooks::

    from sparkfleet import Fleet

    result = Fleet("inventory/spark").deploy(limit="spark-01")
    print(result.summary())

See :class:`Fleet` (operations), :class:`RunOptions` / :class:`Credentials` (what a run takes),
:class:`RunResult` / :class:`HostResult` / :class:`StatusResult` (results) and
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
from sparkfleet.fleet import GRACEFUL_STOP_CORE, OPERATIONS, Fleet, Operation
from sparkfleet.inventory import InventorySource
from sparkfleet.options import (
    CancelToken,
    Credentials,
    ExecutionEnvironment,
    RunOptions,
    VaultId,
)
from sparkfleet.project import Project
from sparkfleet.result import ExitCode, HealthResult, HostResult, RunResult, StatusResult

__version__ = "0.1.0"

__all__ = [
    "GRACEFUL_STOP_CORE",
    "OPERATIONS",
    "AnsibleWarning",
    "CancelToken",
    "Credentials",
    "DownloadProgress",
    "ExecutionEnvironment",
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
    "RunOptions",
    "RunResult",
    "RunStatusChanged",
    "StatusResult",
    "StopRequested",
    "TaskRetry",
    "TaskStarted",
    "TaskStatus",
    "VaultId",
    "__version__",
]

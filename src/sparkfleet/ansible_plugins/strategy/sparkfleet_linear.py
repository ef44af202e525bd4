"""Ansible's ``linear`` strategy plus a graceful stop, requested through a file.

When the file named by the environment variable ``SPARKFLEET_STOP_FILE`` exists, no new task
starts: the task in flight finishes on every host, the handlers already notified on a host still
run (as with ``force_handlers``, so a changed unit file is never left without its restart), and
the play ends. Every later play or ``serial`` batch ends at its first task. Without that variable
the strategy is exactly ``linear``.
"""

from __future__ import annotations

import os
from typing import Any

from ansible.executor.play_iterator import IteratingStates
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategyModule
from ansible.utils.display import Display

DOCUMENTATION = """
    name: sparkfleet_linear
    short_description: linear, plus a graceful stop requested by a file
    description:
        - Task execution is in lockstep per host batch, as with C(linear).
        - When the file named by C(SPARKFLEET_STOP_FILE) exists, no new task starts; the tasks in
          flight finish and notified handlers run.
    author: sparkfleet
"""

display = Display()
STOP_FILE_ENV = "SPARKFLEET_STOP_FILE"


class StrategyModule(LinearStrategyModule):  # type: ignore[misc]
    """The linear strategy that stops between two tasks when asked to."""

    def _get_next_task_lockstep(self, hosts: list[Any], iterator: Any) -> list[Any]:
        stop_file = os.environ.get(STOP_FILE_ENV)
        if (
            stop_file
            and os.path.exists(stop_file)
            and not getattr(iterator, "_sparkfleet_stopped", False)
        ):
            iterator._sparkfleet_stopped = True
            display.warning(
                "sparkfleet: stop requested; the tasks in flight finished, no new task starts"
            )
            if any([self._stop_host(host, iterator) for host in hosts]):
                # as linear does at a flush: the handlers join the lockstep task list here
                handlers = [h for b in iterator._play.handlers for h in b.block]
                iterator.all_tasks[iterator.cur_task : iterator.cur_task] = handlers
        tasks: list[Any] = super()._get_next_task_lockstep(hosts, iterator)
        return tasks

    def _stop_host(self, host: Any, iterator: Any) -> bool:
        """End the host's play after the handlers already notified on it; True if there are any."""
        state = iterator.get_state_for_host(host.name)
        if state.run_state == IteratingStates.HANDLERS:
            state.pre_flushing_run_state = IteratingStates.COMPLETE
            return False
        notified = False
        for notification in list(state.handler_notifications):
            for handler in self.search_handlers_by_notification(notification, iterator):
                if handler.notify_host(host):
                    self._tqm.send_callback("v2_playbook_on_notify", handler, host)
                notified = True
            iterator.clear_notification(host.name, notification)
        if notified or any(host in h.notified_hosts for h in iterator.handlers):
            state.pre_flushing_run_state = IteratingStates.COMPLETE
            state.update_handlers = True
            state.run_state = IteratingStates.HANDLERS
            return True
        iterator.set_run_state_for_host(host.name, IteratingStates.COMPLETE)
        return False

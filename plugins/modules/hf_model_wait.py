# -*- coding: utf-8 -*-
# Apache-2.0
# Documentation only: the action plugin plugins/action/hf_model_wait.py does the work, on the
# controller (it polls the job with async_status and reads the progress file with slurp).

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_model_wait
short_description: Wait for an asynchronous hf_model_fetch job, showing its progress
version_added: 0.1.0
description:
  - Waits for a job started by M(sparkfleet.spark.hf_model_fetch) with C(async) and C(poll=0),
    and returns that module's own result when the job ends (a failed fetch fails this task
    with the fetch's message).
  - Every O(interval) seconds it asks the host for the job's status (C(async_status)) and for
    the progress file the module writes (O(progress_file), read with C(slurp)), and prints one
    line in Ansible's output (bytes done and total, rate, time left, files in flight, source
    and phase) whenever it changed.
  - With O(progress_dir), the progress is also mirrored on the controller to
    C(PROGRESS_DIR/<inventory_hostname>.json), for wrappers that show the fleet's progress.
  - The job's status file is cleaned up on the host when the wait ends, whatever the outcome.
  - This is an action plugin; it runs on the controller and sends only C(async_status) and
    C(slurp) to the host.
options:
  jid:
    description: Job id of the fetch, the C(ansible_job_id) its task registered.
    type: str
    required: true
  progress_file:
    description:
      - Progress file the fetch writes on the host (its O(sparkfleet.spark.hf_model_fetch#module:progress_file)).
      - Empty or unset for no progress lines.
    type: path
  progress_dir:
    description:
      - Directory on the controller to mirror the progress to, one C(<inventory_hostname>.json)
        per host (C(~) is expanded; created when missing).
      - Empty or unset for none. A directory that cannot be written only gives a warning.
    type: path
  interval:
    description: Seconds between two polls (at least 1).
    type: float
    default: 10
  timeout:
    description:
      - Seconds the fetch may take, normally the C(async) value its task was started with.
      - The wait fails 60 seconds after that (the job's own limit comes first).
    type: float
    default: 86400
notes:
  - Start the fetch with C(async) (at least O(timeout)) and C(poll=0), and register its result
    to pass its C(ansible_job_id) as O(jid). Async jobs and
    check mode do not mix, so in check mode run the fetch directly and skip this wait.
seealso:
  - module: sparkfleet.spark.hf_model_fetch
  - module: ansible.builtin.async_status
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Start the fetch
  sparkfleet.spark.hf_model_fetch:
    repo_id: saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10
    local_dir: /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4
    token_file: /etc/sparkfleet/hf_model.token
    progress_file: /run/sparkfleet/hf_model-progress.json
  vars:
    ansible_python_interpreter: /opt/sparkfleet/hf-venv/bin/python
  async: 86400
  poll: 0
  register: fetch_job

- name: Wait for the fetch, reporting its progress
  sparkfleet.spark.hf_model_wait:
    jid: "{{ fetch_job.ansible_job_id }}"
    progress_file: /run/sparkfleet/hf_model-progress.json
    progress_dir: ~/.cache/sparkfleet/progress
    interval: 10
    timeout: 86400
  register: fetched

- name: Show what the fetch did
  ansible.builtin.debug:
    msg: "commit {{ fetched.commit }}: {{ fetched.fetched | length }} file(s), {{ fetched.bytes_fetched }} bytes fetched"
"""

RETURN = r"""
msg:
  description: Why the wait or the fetch failed.
  returned: failure
  type: str
  sample: the fetch did not finish within 86400s (hf_model_fetch_timeout_s)
commit:
  description: Commit the revision resolved to.
  returned: success
  type: str
fetched:
  description: Paths fetched by this run.
  returned: success
  type: list
  elements: str
refetched:
  description: Paths fetched a second time after a size or hash mismatch.
  returned: success
  type: list
  elements: str
removed:
  description: Files of the previous manifest that the new commit no longer has.
  returned: success
  type: list
  elements: str
missing:
  description: Paths missing or differing before the fetch.
  returned: when the job ended
  type: list
  elements: str
up_to_date:
  description: True when files and manifest already matched (nothing to do).
  returned: success
  type: bool
files_total:
  description: Number of files in the repository.
  returned: success
  type: int
bytes_total:
  description: Total size of the repository's files.
  returned: success
  type: int
bytes_to_fetch:
  description: Bytes still to fetch when the run started (partial files count as fetched).
  returned: success
  type: int
bytes_fetched:
  description: Bytes received by this run.
  returned: success
  type: int
seconds:
  description: Duration of the fetch phase.
  returned: success
  type: float
manifest:
  description: The manifest written to the model directory.
  returned: success
  type: dict
"""

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""One check of the vLLM OpenAI-compatible API: health, models, chat or tool_call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_health_api
short_description: Check one vLLM endpoint and report its latency
version_added: 0.1.0
description:
  - C(health) - GET /health answers 200.
  - C(models) - GET /v1/models serves O(model) with O(max_model_len); with O(api_key) and
    O(check_auth), a request without the key must be refused (401/403).
  - C(auth) - without the key, C(GET /v1/models), C(POST /v1/chat/completions),
    C(POST /invocations) and C(POST /tokenize) are refused (401/403) and C(/health) answers 200.
    vLLM's own key leaves C(/invocations) and C(/tokenize) open (vllm#58144); an authenticating
    proxy in front of it closes them.
  - C(chat) - a chat completion with O(sampling) whose content carries C(<think>...</think>)
    and an answer after it.
  - C(tool_call) - a chat completion offered one tool answers with C(finish_reason=tool_calls),
    the tool's name and JSON arguments holding its required parameter.
  - "With O(stream), C(chat) and C(tool_call) read the answer as vLLM streams it (server-sent
    events, C(data: [DONE]) last, tool calls in deltas joined by index); any other line, an
    event that is not a C(chat.completion.chunk) or a stream without C([DONE]) fails, and so
    does a streamed tool call whose arguments come in one event (a build that buffers them;
    vLLM streams them as they are generated)."
  - "C(chat) and C(tool_call) judge the answer and send the request again, up to O(attempts)
    times, before they fail: a reasoning model at temperature 1.0 may run out of O(max_tokens)
    while it reasons, or answer in words once."
  - Read-only; the requests are sent in check mode too.
options:
  url:
    description: Base URL of the endpoint, e.g. C(http://127.0.0.1:8000).
    type: str
    required: true
  check:
    description: What to check.
    type: str
    required: true
    choices: [health, models, auth, chat, tool_call]
  api_key:
    description: Bearer token; empty for none.
    type: str
    default: ""
  check_auth:
    description: With O(api_key), also check that a request without it is refused.
    type: bool
    default: true
  model:
    description: Served model id; required unless O(check=health).
    type: str
  max_model_len:
    description: Context length /v1/models must report; 0 to skip.
    type: int
    default: 0
  prompt:
    description: User message of the chat check.
    type: str
    default: Hello! What can you do?
  tool_prompt:
    description: User message of the tool-call check.
    type: str
    default: What is the weather like in Paris right now?
  max_tokens:
    description: max_tokens of the chat and tool-call requests (the reasoning comes first).
    type: int
    default: 2048
  stream:
    description: Ask for the answer streamed (server-sent events) and check the stream.
    type: bool
    default: false
  attempts:
    description: Requests sent before a C(chat) or C(tool_call) answer that does not pass fails the check, at least 1.
    type: int
    default: 2
  sampling:
    description: Sampling settings added to the chat and tool-call requests (the role passes the model profile's).
    type: dict
    default: {}
  timeout_s:
    description: Seconds one request may take.
    type: float
    default: 300
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Check that /health answers
  sparkfleet.spark.vllm_health_api:
    url: http://127.0.0.1:8000
    check: health

- name: Check that /v1/models serves the model with its context length, and enforces the key
  sparkfleet.spark.vllm_health_api:
    url: http://127.0.0.1:8000
    check: models
    api_key: "{{ vllm_api_key }}"
    model: MiniMax-M2.5-REAP-172B-NVFP4
    max_model_len: 65536
  register: models

- name: Check a chat completion (reasoning, then an answer)
  sparkfleet.spark.vllm_health_api:
    url: http://127.0.0.1:8000
    check: chat
    api_key: "{{ vllm_api_key }}"
    prompt: Hello! What can you do?
    max_tokens: 512
    sampling:
      temperature: 1.0
      top_p: 0.95
      top_k: 40
      min_p: 0.01
    timeout_s: 300
  register: chat

- name: Check a tool call, streamed
  sparkfleet.spark.vllm_health_api:
    url: http://127.0.0.1:8000
    check: tool_call
    api_key: "{{ vllm_api_key }}"
    tool_prompt: What is the weather like in Paris right now?
    stream: true
  register: tool_call

- name: Check that requests without the key are refused on every inference route
  sparkfleet.spark.vllm_health_api:
    url: http://127.0.0.1:8000
    check: auth
    api_key: "{{ vllm_api_key }}"
    model: MiniMax-M2.5-REAP-172B-NVFP4

- name: Show the answer and the speed
  ansible.builtin.debug:
    msg: "{{ chat.answer }} ({{ chat.tokens_per_s }} tokens/s, {{ chat.latency_ms }} ms)"
"""

RETURN = r"""
check:
  description: The check made (O(check)).
  type: str
  returned: always
  sample: chat
latency_ms:
  description: Milliseconds the (authenticated) request took.
  type: float
  returned: success
  sample: 12.3
served:
  description: Model ids /v1/models lists.
  type: list
  elements: str
  returned: when O(check=models)
  sample: [MiniMax-M2.5-REAP-172B-NVFP4]
model:
  description: The model checked (O(model)).
  type: str
  returned: when O(check=models)
  sample: MiniMax-M2.5-REAP-172B-NVFP4
max_model_len:
  description: Context length /v1/models reports for the model.
  type: int
  returned: when O(check=models)
  sample: 65536
root:
  description: The model's C(root) in /v1/models (where vLLM loaded it from).
  type: str
  returned: when O(check=models)
  sample: /models/MiniMax-M2.5-REAP-172B-NVFP4
refused:
  description: HTTP status of each request sent without the key, by C(METHOD PATH).
  type: dict
  returned: when O(check=auth)
  sample: {"GET /v1/models": 401, "POST /invocations": 401}
attempts:
  description: Requests sent until the answer passed.
  type: int
  returned: when O(check) is C(chat) or C(tool_call)
  sample: 1
stream:
  description: Whether the answer was streamed (O(stream)).
  type: bool
  returned: when O(check) is C(chat) or C(tool_call)
chunks:
  description: Events of the streamed answer (without C([DONE])).
  type: int
  returned: when O(stream) and O(check) is C(chat) or C(tool_call)
  sample: 87
first_chunk_ms:
  description: Milliseconds from the request to the first event of the stream.
  type: float
  returned: when O(stream) and O(check) is C(chat) or C(tool_call)
  sample: 412.0
unauthenticated_status:
  description: HTTP status of the request sent without the key (401 or 403).
  type: int
  returned: when O(check=models), O(api_key) is set and O(check_auth=true)
  sample: 401
completion_tokens:
  description: Tokens generated (C(usage.completion_tokens)).
  type: int
  returned: when O(check) is C(chat) or C(tool_call)
  sample: 312
prompt_tokens:
  description: Tokens of the prompt (C(usage.prompt_tokens)).
  type: int
  returned: when O(check) is C(chat) or C(tool_call)
  sample: 42
tokens_per_s:
  description: Completion tokens per second of the whole request, null when unknown.
  type: float
  returned: when O(check) is C(chat) or C(tool_call)
  sample: 35.2
finish_reason:
  description: C(finish_reason) of the first choice.
  type: str
  returned: when O(check) is C(chat) or C(tool_call)
  sample: stop
answer:
  description: The answer after C(</think>), cut to 300 characters.
  type: str
  returned: when O(check=chat)
reasoning_chars:
  description: Length of the reasoning inside C(<think>...</think>).
  type: int
  returned: when O(check=chat)
  sample: 1024
function:
  description: Name of the tool called.
  type: str
  returned: when O(check=tool_call)
  sample: get_weather
arguments:
  description: Arguments of the tool call, parsed.
  type: dict
  returned: when O(check=tool_call)
  sample: {"location": "Paris"}
"""

import json
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sparkfleet.spark.plugins.module_utils.vllm_health_probe import (
    assemble_chat_stream,
    http,
    sse,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
THINK_ANSWER = re.compile(r"^\s*<think>(?P<reasoning>.*?)</think>(?P<answer>.*)$", re.DOTALL)


def excerpt(body):
    text = body if isinstance(body, str) else json.dumps(body)
    return text[:300]


def expect_ok(module, what, status, body, url):
    if status == 200:
        return
    if status == 0:
        module.fail_json(msg="%s: no answer from %s (%s)" % (what, url, body))
    advice = ""
    if status == 401:
        advice = " (the endpoint wants an API key: set vllm_health_api_key, which defaults to vllm_api_key)"
    module.fail_json(msg="%s: %s answered %d: %s%s" % (what, url, status, excerpt(body), advice),
                     status=status)


def check_models(module, p, base):
    url = base + "/v1/models"
    status, body, ms = http(url, api_key=p["api_key"], timeout=p["timeout_s"])
    expect_ok(module, "/v1/models", status, body, url)
    data = body.get("data") if isinstance(body, dict) else None
    served = [m for m in data or [] if isinstance(m, dict)]
    ids = [m.get("id") for m in served]
    entry = next((m for m in served if m.get("id") == p["model"]), None)
    if entry is None:
        module.fail_json(msg="/v1/models serves %s, not %s (vllm_health_model; the service's "
                         "vllm_served_model_name)" % (ids, p["model"]), served=ids)
    if p["max_model_len"] and entry.get("max_model_len") != p["max_model_len"]:
        module.fail_json(msg="/v1/models reports max_model_len %s for %s, expected %d "
                         "(vllm_max_model_len)" % (entry.get("max_model_len"), p["model"],
                                                   p["max_model_len"]), served=ids)
    result = dict(latency_ms=round(ms, 1), served=ids, model=p["model"],
                  max_model_len=entry.get("max_model_len"), root=entry.get("root"))
    if p["api_key"] and p["check_auth"]:
        refused, _body, _ms = http(url, timeout=p["timeout_s"])
        if refused not in (401, 403):
            module.fail_json(msg="%s answered %d to a request without the API key: the key is "
                             "not enforced (is the authenticating proxy in front of vLLM, and "
                             "vllm_api_key set on the service?)" % (url, refused))
        result["unauthenticated_status"] = refused
    return result


class Unfit(Exception):
    """An answer that came back but does not pass (a reasoning model may do better next time)."""


def chat(module, p, base, messages, extra):
    """One chat completion, streamed or not: (finish_reason, message, metrics). The message has
    OpenAI's shape (content, tool_calls) either way."""
    url = base + "/v1/chat/completions"
    payload = dict(model=p["model"], messages=messages, max_tokens=p["max_tokens"])
    payload.update(p["sampling"] or {})
    payload.update(extra)
    if not p["stream"]:
        status, body, ms = http(url, "POST", payload, api_key=p["api_key"], timeout=p["timeout_s"])
        expect_ok(module, "chat completion", status, body, url)
        try:
            choice = body["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            module.fail_json(msg="chat completion: no choices[0].message in %s" % excerpt(body))
        metrics = dict(latency_ms=round(ms, 1))
        usage = body.get("usage") or {}
        return choice.get("finish_reason"), message, usage, metrics
    payload.update(stream=True, stream_options={"include_usage": True})
    answer = sse(url, payload, api_key=p["api_key"], timeout=p["timeout_s"])
    if answer["status"] != 200:
        expect_ok(module, "streamed chat completion", answer["status"], answer["error"], url)
    if answer["error"]:
        module.fail_json(msg="streamed chat completion from %s: %s (%d event(s) before it)"
                         % (url, answer["error"], len(answer["events"])))
    stream = assemble_chat_stream(answer["events"])
    if isinstance(stream, str):
        module.fail_json(msg="streamed chat completion from %s: %s" % (url, stream))
    message = dict(content=stream["content"], tool_calls=stream["tool_calls"],
                   argument_events=stream["argument_events"])
    metrics = dict(latency_ms=round(answer["total_ms"], 1), chunks=stream["chunks"],
                   first_chunk_ms=round(answer["first_event_ms"] or 0.0, 1))
    return stream["finish_reason"], message, stream["usage"] or {}, metrics


def judged(module, p, base, messages, extra, judge):
    """Send the request until ``judge`` accepts the answer, at most O(attempts) times: a
    reasoning model sampled at temperature 1.0 may now and then run out of tokens while it
    reasons, or answer in words where a tool call was asked for."""
    reasons = []
    for attempt in range(1, p["attempts"] + 1):
        finish, message, usage, metrics = chat(module, p, base, messages, extra)
        try:
            verdict = judge(finish, message)
        except Unfit as exc:
            reasons.append("attempt %d: %s" % (attempt, exc))
            continue
        tokens = usage.get("completion_tokens")
        ms = metrics["latency_ms"]
        verdict.update(metrics, attempts=attempt, finish_reason=finish, completion_tokens=tokens,
                       prompt_tokens=usage.get("prompt_tokens"), stream=p["stream"],
                       tokens_per_s=round(tokens / (ms / 1000.0), 1) if tokens and ms > 0 else None)
        return verdict
    module.fail_json(msg="%s%s failed %d time(s): %s" % (
        "streamed " if p["stream"] else "", p["check"].replace("_", " "), p["attempts"],
        "; ".join(reasons)))


def check_chat(module, p, base):
    def judge(finish, message):
        content = message.get("content") or ""
        match = THINK_ANSWER.match(content)
        if not match or not match.group("answer").strip():
            raise Unfit("content is not <think>...</think> followed by an answer (reasoning "
                        "parser minimax_m2_append_think; finish_reason %s%s): %s"
                        % (finish, ", raise vllm_health_max_tokens" if finish == "length" else "",
                           json.dumps(content[:300])))
        return dict(answer=match.group("answer").strip()[:300],
                    reasoning_chars=len(match.group("reasoning")))

    return judged(module, p, base, [{"role": "user", "content": p["prompt"]}], {}, judge)


def check_tool_call(module, p, base):
    def judge(finish, message):
        calls = message.get("tool_calls") or []
        if finish != "tool_calls" or not calls:
            raise Unfit("finish_reason %s with %d tool call(s), expected tool_calls (vLLM needs "
                        "--enable-auto-tool-choice --tool-call-parser minimax_m2); content: %s"
                        % (finish, len(calls), json.dumps((message.get("content") or "")[-200:])))
        function = calls[0].get("function") or {}
        if function.get("name") != "get_weather":
            raise Unfit("tool call names %r, expected get_weather" % function.get("name"))
        try:
            arguments = json.loads(function.get("arguments") or "")
        except ValueError:
            raise Unfit("tool call arguments are not JSON: %r" % function.get("arguments"))
        if not isinstance(arguments, dict) or "location" not in arguments:
            raise Unfit("tool call arguments %s lack the required location"
                        % json.dumps(arguments))
        # vLLM's minimax_m2 parser streams the arguments as they are generated ("{", each
        # parameter, "}"); a build that buffers the call and sends it whole at the end
        # (vllm#28963, #40779, #39649) passes every other check, and would again next time.
        events = (message.get("argument_events") or [None])[0]
        if events is not None and events < 2:
            module.fail_json(msg="streamed tool call: its arguments %s came in %d event(s); vLLM "
                             "streams them in several as they are generated, so this server "
                             "buffers streamed tool calls (vllm#28963, #40779, #39649)"
                             % (json.dumps(function.get("arguments")), events))
        return dict(function=function["name"], arguments=arguments)

    messages = [{"role": "user", "content": p["tool_prompt"]}]
    extra = {"tools": [WEATHER_TOOL], "tool_choice": "auto"}
    return judged(module, p, base, messages, extra, judge)


# Requests that must be refused without the key: vLLM's own key leaves the last two open
# (vllm#58144); the proxy in front of it must not.
KEYED_ROUTES = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                ("POST", "/invocations"), ("POST", "/tokenize")]


def check_auth(module, p, base):
    """Without the key, every keyed route is refused (401/403) and /health still answers."""
    if not p["api_key"]:
        module.fail_json(msg="check=auth needs api_key (the key the endpoint must require)")
    chat_body = dict(model=p["model"], messages=[{"role": "user", "content": p["prompt"]}],
                     max_tokens=1)
    refused, open_routes = {}, []
    for method, path in KEYED_ROUTES:
        payload = None
        if method == "POST":
            payload = dict(model=p["model"], prompt=p["prompt"]) if path == "/tokenize" else chat_body
        status, _body, _ms = http(base + path, method, payload, timeout=p["timeout_s"])
        refused["%s %s" % (method, path)] = status
        if status not in (401, 403):
            open_routes.append("%s %s answered %d" % (method, path, status))
    if open_routes:
        module.fail_json(msg="requests without the API key were not refused at %s: %s (vLLM's "
                         "own key covers /v1/* only: is the authenticating proxy in front of it, "
                         "vllm_port and vllm_api_key set on the service?)"
                         % (base, "; ".join(open_routes)), refused=refused)
    status, body, ms = http(base + "/health", timeout=p["timeout_s"])
    expect_ok(module, "/health without the key", status, body, base + "/health")
    return dict(refused=refused, latency_ms=round(ms, 1))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            check=dict(type="str", required=True,
                       choices=["health", "models", "auth", "chat", "tool_call"]),
            api_key=dict(type="str", default="", no_log=True),
            check_auth=dict(type="bool", default=True),
            model=dict(type="str"),
            max_model_len=dict(type="int", default=0),
            prompt=dict(type="str", default="Hello! What can you do?"),
            tool_prompt=dict(type="str", default="What is the weather like in Paris right now?"),
            max_tokens=dict(type="int", default=2048, no_log=False),
            stream=dict(type="bool", default=False),
            attempts=dict(type="int", default=2),
            sampling=dict(type="dict", default={}),
            timeout_s=dict(type="float", default=300),
        ),
        required_if=[("check", c, ["model"]) for c in ("models", "auth", "chat", "tool_call")],
        supports_check_mode=True,
    )
    p = module.params
    base = p["url"].rstrip("/")
    if p["attempts"] < 1:
        module.fail_json(msg="attempts=%d must be at least 1" % p["attempts"])
    if p["check"] == "health":
        url = base + "/health"
        status, body, ms = http(url, api_key=p["api_key"], timeout=p["timeout_s"])
        expect_ok(module, "/health", status, body, url)
        result = dict(latency_ms=round(ms, 1))
    elif p["check"] == "models":
        result = check_models(module, p, base)
    elif p["check"] == "auth":
        result = check_auth(module, p, base)
    elif p["check"] == "chat":
        result = check_chat(module, p, base)
    else:
        result = check_tool_call(module, p, base)
    module.exit_json(changed=False, check=p["check"], **result)


if __name__ == "__main__":
    main()

"""A local OpenAI-compatible Chat Completions endpoint that enforces the hosted API's rules.

``StrictOpenAIEndpoint`` is a real HTTP server on 127.0.0.1 (a free port, a background
thread of the test process) serving ``POST /v1/chat/completions``. A client that breaks a
rule of the hosted API gets the 400 the hosted API would send, with its message where it
is known. By default ``Hosted()`` answers like a hosted model; ``script(*steps)`` queues
misbehaviours (``Answer``, ``CallTool``, ``Loop``, ``UnknownTool``, ``HttpError``, ``Delay``,
``Structured``, ``Replies``), one per request, and ``chat_model()`` returns a ``ChatOpenAI``
pointed at the endpoint (``tests/test_openai_endpoint.py`` shows each in use).

Rules enforced on every request (each violation is a 400 with an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}``; a rejected request is recorded but
never reaches the model and uses no scripted step):

1. Tool-call pairing: an assistant message with ``tool_calls`` is immediately followed by
   one tool message per ``tool_call_id``; a tool message answers a call of the assistant
   message before its run of tool messages.
2. Well-formed requests: ``model`` and a non-empty ``messages``; known top-level
   parameters only; roles system / developer / user / assistant / tool; content a string
   or content parts of a type the role allows; tool messages carry ``tool_call_id``;
   assistant tool calls are ``{"id", "type": "function", "function": {"name",
   "arguments": <string>}}``; ``Authorization: Bearer ...`` present (401 otherwise, and
   for a wrong key when ``api_key`` is given); ``tool_choice`` / ``parallel_tool_calls``
   only with tools; ``stream_options`` only with ``stream``; ``response_format``
   ``json_object`` only when a message says "json".
3. Tools: ``{"type": "function", "function": {name, description?, parameters?, strict?}}``,
   names matching ``^[a-zA-Z0-9_-]{1,64}$`` and unique, ``parameters`` an object schema.
   A ``strict: true`` schema (tool or ``response_format``) follows structured-output
   rules: every object has ``additionalProperties: false`` and lists every property in
   ``required``, and none of ``UNSUPPORTED_STRICT_KEYWORDS`` appears. ``default`` is
   accepted as the hosted API accepts it (langchain's strict schemas keep it); pass
   ``reject_defaults=True`` to refuse it as Azure OpenAI does. With
   ``require_strict_tools=True`` (the default: the project sends strict schemas only) a
   tool without ``strict: true`` is a 400 too.
4. The model's own tool-call arguments (``Hosted``) are checked against the tool's schema
   before they are sent (a 500 if the generator cannot satisfy a schema); the scripted
   misbehaviours (``CallTool``, ``Loop``, ``UnknownTool``, ``Structured``) send what they
   are given.
5. Every successful completion carries ``usage``. Tokens are counted like
   ``langchain_core.messages.utils.count_tokens_approximately``: ceil(characters / 4) for
   each message's role, name, text, tool calls and tool_call_id, plus 3 per message, plus
   the JSON of the tool definitions and of ``response_format``; completion tokens are the
   same count of the reply's text and tool calls. Never tiktoken.
6. ``stream: true`` is supported: server-sent ``chat.completion.chunk`` events (content
   and tool-call argument deltas, a finish chunk, ``data: [DONE]``) and, with
   ``stream_options.include_usage``, a final chunk with empty ``choices`` and the usage.

Responses are HTTP/1.0 (one request per connection), so ``close()`` never waits for an
idle keep-alive connection; a ``Delay`` in progress is interrupted by ``close()``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from jsonschema import Draft202012Validator

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
SLICE_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
ROLES = ("system", "developer", "user", "assistant", "tool")
CONTENT_PARTS = {"system": {"text"}, "developer": {"text"}, "tool": {"text"},
                 "assistant": {"text", "refusal"}, "user": {"text", "image_url", "input_audio", "file"}}
KNOWN_PARAMS = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
    "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n",
    "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
UNSUPPORTED_STRICT_KEYWORDS = (
    "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "patternProperties",
    "unevaluatedProperties", "propertyNames", "minProperties", "maxProperties", "unevaluatedItems",
    "contains", "minContains", "maxContains", "uniqueItems",
)
MISSING_TOOL_RESPONSES = ("An assistant message with 'tool_calls' must be followed by tool messages responding "
                          "to each 'tool_call_id'. The following tool_call_ids did not have response messages: {ids}")
TOOL_WITHOUT_CALL = ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                     "with 'tool_calls'.")  # sic: the hosted API's spelling
UNKNOWN_TOOL_CALL_ID = "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of previous message."
NOT_STRICT = ("Tool '{name}' is not strict: this endpoint requires 'strict': true on every tool "
              "(require_strict_tools=True; the project sends strict schemas only).")
NO_API_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
              "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
BAD_JSON = ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
            "JSON.)")
ERROR_TYPES = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error",
               429: "requests", 500: "server_error", 502: "server_error", 503: "server_error"}
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
MAX_FACTS = 6


class ApiError(Exception):
    """An HTTP error response in the OpenAI format."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _missing(param: str) -> ApiError:
    return _bad(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _wrong_type(param: str, expected: str, value: Any) -> ApiError:
    got = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
    return _bad(f"Invalid type for '{param}': expected {expected}, but got {got} instead.", param, "invalid_type")


def _invalid_value(value: Any, supported: tuple[str, ...], param: str) -> ApiError:
    names = [f"'{s}'" for s in supported]
    listed = ", ".join(names[:-1]) + f", and {names[-1]}" if len(names) > 2 else " and ".join(names)
    return _bad(f"Invalid value: '{value}'. Supported values are: {listed}.", param, "invalid_value")


# ------------------------------------------------------------------ the request's rules

def validate_request(body: Any, *, require_strict_tools: bool = True, reject_defaults: bool = False) -> None:
    """Raise the hosted API's 400 for the first rule ``body`` breaks."""
    if not isinstance(body, dict):
        raise _bad(BAD_JSON)
    unknown = [k for k in body if k not in KNOWN_PARAMS]
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {unknown[0]}")
    if not body.get("model"):
        raise _bad("you must provide a model parameter")
    _check_messages(body.get("messages"))
    _check_tool_pairing(body["messages"])
    _check_tools(body.get("tools"), require_strict_tools, reject_defaults)
    _check_tool_choice(body)
    _check_response_format(body.get("response_format"), body["messages"], reject_defaults)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise _bad("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    if body.get("n") not in (None, 1):
        raise _bad("This test endpoint answers n=1 only (the hosted API allows more).", "n")


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise _bad("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
                   "array instead.", "messages", "empty_array")
    for i, message in enumerate(messages):
        _check_message(f"messages[{i}]", message)


def _check_message(where: str, m: Any) -> None:
    if not isinstance(m, dict):
        raise _wrong_type(where, "an object", m)
    if "role" not in m:
        raise _missing(f"{where}.role")
    role = m["role"]
    if role not in ROLES:
        raise _invalid_value(role, ("system", "assistant", "user", "tool", "developer"), f"{where}.role")
    if "name" in m and not isinstance(m["name"], str):
        raise _wrong_type(f"{where}.name", "a string", m["name"])
    if role == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise _missing(f"{where}.tool_call_id") if m.get("tool_call_id") is None else \
            _wrong_type(f"{where}.tool_call_id", "a string", m["tool_call_id"])
    calls = m.get("tool_calls") if role == "assistant" else None
    if calls is not None:
        _check_tool_calls(f"{where}.tool_calls", calls)
    content = m.get("content")
    if content is None:
        if role != "assistant" or not (calls or m.get("function_call") or m.get("audio")):
            raise _missing(f"{where}.content")
        return
    _check_content(f"{where}.content", content, CONTENT_PARTS[role])


def _check_content(where: str, content: Any, allowed: set[str]) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong_type(where, "one of a string or array of objects", content)
    if not content:
        raise _bad(f"Invalid '{where}': empty array. Expected an array with minimum length 1, but got an empty "
                   "array instead.", where, "empty_array")
    for k, part in enumerate(content):
        if not isinstance(part, dict):
            raise _wrong_type(f"{where}[{k}]", "an object", part)
        if part.get("type") not in allowed:
            raise _invalid_value(part.get("type"), tuple(sorted(allowed)), f"{where}[{k}].type")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _missing(f"{where}[{k}].text")


def _check_tool_calls(where: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise _wrong_type(where, "an array", calls)
    if not calls:
        raise _bad(f"Invalid '{where}': empty array. Expected an array with minimum length 1, but got an empty "
                   "array instead.", where, "empty_array")
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise _wrong_type(at, "an object", call)
        for key in ("id", "type", "function"):
            if key not in call:
                raise _missing(f"{at}.{key}")
        if call["type"] != "function":
            raise _invalid_value(call["type"], ("function", "custom"), f"{at}.type")
        fn = call["function"]
        if not isinstance(fn, dict):
            raise _wrong_type(f"{at}.function", "an object", fn)
        for key in ("name", "arguments"):
            if not isinstance(fn.get(key), str):
                raise _missing(f"{at}.function.{key}") if key not in fn else \
                    _wrong_type(f"{at}.function.{key}", "a string", fn[key])


def _check_tool_pairing(messages: list[dict[str, Any]]) -> None:
    """Rule 1: every tool call answered right after its assistant message, nothing else."""
    i = 0
    while i < len(messages):
        start, m = i, messages[i]
        if m["role"] == "tool":
            raise _bad(TOOL_WITHOUT_CALL, f"messages.[{i}].role")
        i += 1
        if m["role"] != "assistant" or not m.get("tool_calls"):
            continue
        pending = [c["id"] for c in m["tool_calls"]]
        while i < len(messages) and messages[i]["role"] == "tool":
            call_id = messages[i]["tool_call_id"]
            if call_id not in pending:
                raise _bad(UNKNOWN_TOOL_CALL_ID.format(id=call_id), f"messages.[{i}].tool_call_id")
            pending.remove(call_id)
            i += 1
        if pending:
            raise _bad(MISSING_TOOL_RESPONSES.format(ids=", ".join(pending)),
                       f"messages.[{start}].role")


def _check_tools(tools: Any, require_strict: bool, reject_defaults: bool) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _wrong_type("tools", "an array", tools)
    if not tools:
        raise _bad("Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty "
                   "array instead.", "tools", "empty_array")
    seen: set[str] = set()
    for k, tool in enumerate(tools):
        where = f"tools[{k}]"
        if not isinstance(tool, dict):
            raise _wrong_type(where, "an object", tool)
        if tool.get("type") != "function":
            raise _missing(f"{where}.type") if "type" not in tool else \
                _bad(f"Invalid value: '{tool['type']}'. This test endpoint implements 'function' tools only.",
                     f"{where}.type", "invalid_value")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _missing(f"{where}.function") if fn is None else _wrong_type(f"{where}.function", "an object", fn)
        name = _checked_name(fn.get("name"), f"{where}.function.name")
        if name in seen:
            raise _bad(f"Invalid 'tools': the function name '{name}' is used by more than one tool.", "tools")
        seen.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            raise _wrong_type(f"{where}.function.description", "a string", fn["description"])
        _check_schema(fn.get("parameters", {"type": "object", "properties": {}}), fn.get("strict") is True,
                      f"function '{name}'", f"{where}.function.parameters", reject_defaults)
        if require_strict and fn.get("strict") is not True:
            raise _bad(NOT_STRICT.format(name=name), f"{where}.function.strict", "strict_required")


def _checked_name(name: Any, param: str) -> str:
    if name is None:
        raise _missing(param)
    if not isinstance(name, str):
        raise _wrong_type(param, "a string", name)
    if len(name) > 64:
        raise _bad(f"Invalid '{param}': string too long. Expected a string with maximum length 64, but got a "
                   f"string with length {len(name)} instead.", param, "string_above_max_length")
    if not TOOL_NAME.match(name):
        raise _bad(f"Invalid '{param}': string does not match pattern. Expected a string that matches the "
                   "pattern '^[a-zA-Z0-9_-]+$'.", param, "invalid_value")
    return name


def _check_schema(schema: Any, strict: bool, what: str, param: str, reject_defaults: bool) -> None:
    code = "invalid_function_parameters" if what.startswith("function") else "invalid_json_schema"
    if not isinstance(schema, dict) or schema.get("type") != "object":
        got = schema.get("type") if isinstance(schema, dict) else type(schema).__name__
        raise _bad(f"Invalid schema for {what}: schema must be a JSON Schema of 'type: \"object\"', got "
                   f"'type: \"{got}\"'.", param, code)
    problem = strict_schema_problem(schema, reject_defaults=reject_defaults) if strict else None
    if problem:
        raise _bad(f"Invalid schema for {what}: {problem}", param, code)


def strict_schema_problem(schema: Any, *, reject_defaults: bool = False,
                          path: tuple[str, ...] = ()) -> str | None:
    """The first way ``schema`` breaks structured-output strict mode, in the hosted API's words."""
    if not isinstance(schema, dict):
        return None
    where = f"In context={path!r}, "
    forbidden = UNSUPPORTED_STRICT_KEYWORDS + (("default",) if reject_defaults else ())
    for keyword in forbidden:
        if keyword in schema:
            return f"{where}'{keyword}' is not permitted."
    kinds = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    if "object" in kinds or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"{where}'additionalProperties' is required to be supplied and to be false."
        required = schema.get("required")
        missing = [p for p in schema.get("properties") or {} if not isinstance(required, list) or p not in required]
        if missing or not isinstance(required, list):
            return (f"{where}'required' is required to be supplied and to be an array including every key in "
                    "properties." + (f" Missing '{missing[0]}'." if missing else ""))
    children = [(("items",), schema.get("items"))]
    children += [(("properties", k), v) for k, v in (schema.get("properties") or {}).items()]
    children += [((key, str(i)), v) for key in ("anyOf", "oneOf") for i, v in enumerate(schema.get(key) or [])]
    children += [((key, k), v) for key in ("$defs", "definitions") for k, v in (schema.get(key) or {}).items()]
    for step, child in children:
        if (problem := strict_schema_problem(child, reject_defaults=reject_defaults, path=path + step)):
            return problem
    return None


def _check_tool_choice(body: dict[str, Any]) -> None:
    choice, tools = body.get("tool_choice"), body.get("tools")
    for param in ("tool_choice", "parallel_tool_calls"):
        if body.get(param) is not None and not tools:
            raise _bad(f"Invalid value for '{param}': '{param}' is only allowed when 'tools' are specified.", param)
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _invalid_value(choice, ("none", "auto", "required"), "tool_choice")
        return
    if not isinstance(choice, dict) or choice.get("type") != "function":
        raise _bad("Invalid 'tool_choice': this test endpoint implements 'none', 'auto', 'required' and "
                   "{'type': 'function', 'function': {'name': ...}}.", "tool_choice", "invalid_value")
    name = (choice.get("function") or {}).get("name")
    if name not in {t["function"]["name"] for t in tools}:
        raise _bad(f"Invalid value for 'tool_choice': function '{name}' is not one of the tools provided.",
                   "tool_choice", "invalid_value")


def _check_response_format(fmt: Any, messages: list[dict[str, Any]], reject_defaults: bool) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        if not any("json" in _text(m).lower() for m in messages):
            raise _bad("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                       "'json_object'.", "messages")
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise _missing("response_format.json_schema")
        name = _checked_name(spec.get("name"), "response_format.json_schema.name")
        _check_schema(spec.get("schema"), spec.get("strict") is True, f"response_format '{name}'",
                      "response_format", reject_defaults)
    elif kind != "text":
        raise _invalid_value(kind, ("text", "json_object", "json_schema"), "response_format.type")


# ------------------------------------------------------------------ what a behaviour sees and says

def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


@dataclass(frozen=True)
class ToolResult:
    """A tool message of the current turn, with the name of the tool call it answers."""

    tool_name: str
    content: str


@dataclass
class Chat:
    """A validated request, as a behaviour sees it."""

    body: dict[str, Any]
    wait: Callable[[float], bool] = lambda seconds: False
    """Sleep up to ``seconds``; True when the endpoint is closing (stop waiting)."""
    default: Behaviour | None = None
    """The endpoint's behaviour (a ``Delay`` without ``then`` hands over to it)."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The offered functions (the ``function`` objects of ``tools``)."""
        return [t["function"] for t in self.body.get("tools") or []]

    @property
    def latest_user_text(self) -> str:
        return next((_text(m) for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def tool_results(self) -> list[ToolResult]:
        """Tool messages after the latest user message."""
        names: dict[str, str] = {}
        results = []
        for m in self.messages:
            if m["role"] == "user":
                results = []
            for call in m.get("tool_calls") or []:
                names[call["id"]] = call["function"]["name"]
            if m["role"] == "tool":
                results.append(ToolResult(names.get(m["tool_call_id"], "tool"), _text(m)))
        return results

    @property
    def forced_tool(self) -> str | None:
        choice = self.body.get("tool_choice")
        return choice["function"]["name"] if isinstance(choice, dict) else None

    @property
    def response_schema(self) -> dict[str, Any] | None:
        fmt = self.body.get("response_format") or {}
        return fmt["json_schema"].get("schema") if fmt.get("type") == "json_schema" else None

    @property
    def json_mode(self) -> bool:
        return (self.body.get("response_format") or {}).get("type") == "json_object"

    @property
    def may_call_tools(self) -> bool:
        return bool(self.tools) and self.body.get("tool_choice") != "none"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str
    id: str | None = None  # assigned by the endpoint when None


@dataclass(frozen=True)
class Reply:
    """The assistant message a behaviour answers with."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


class Behaviour(Protocol):
    """How the model answers one request; ``None`` means no answer at all (the endpoint closed)."""

    def __call__(self, chat: Chat) -> Reply | None: ...


Step = Behaviour


# ------------------------------------------------------------------ the hosted model

STOPWORDS = frozenset(
    "the and for are was were what whats with their they them this that have has how why when who does did "
    "any all can you your our from into about which there its not but also been will would should could "
    "only more most each other than then these those such where please tell give show".split())


def words(text: str) -> set[str]:
    """Content words: lower-case alphanumeric runs of 3+ characters, no stopwords, plural -s dropped."""
    out = set()
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if len(w) >= 3 and w not in STOPWORDS:
            out.add(w[:-1] if w.endswith("s") and not w.endswith("ss") and len(w) > 3 else w)
    return out


def _scores(texts: list[str], question: set[str]) -> list[float]:
    """Shared content words, weighted log(n / df): a word every candidate has decides nothing."""
    docs = [words(t) for t in texts]
    n = len(docs)
    df = {w: sum(w in d for d in docs) for d in docs for w in d}
    return [round(sum(1.0 if n == 1 else math.log(n / df[w]) for w in d & question), 9) for d in docs]


def best_matches(values: list[Any], question: set[str]) -> list[Any]:
    """The values whose words best match the question ([] when none shares a word)."""
    scores = _scores([str(v) for v in values], question)
    top = max(scores, default=0.0)
    return [v for v, s in zip(values, scores, strict=True) if s == top and s > 0]


@dataclass(frozen=True)
class _Question:
    text: str
    words: set[str]


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part] if part else node
        schema = node
    return schema


FORMATS = {"date": "2026-01-15", "date-time": "2026-01-15T12:00:00Z", "email": "someone@example.com",
           "uri": "https://example.com", "uuid": "00000000-0000-4000-8000-000000000000"}


def example_for(schema: dict[str, Any], q: _Question, root: dict[str, Any], prop: str = "") -> Any:
    """A value satisfying ``schema``, chosen from the question's words where the schema leaves a choice."""
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return (best_matches(schema["enum"], q.words) or schema["enum"])[0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [o for o in schema[key] if _resolve(o, root).get("type") != "null"] or schema[key]
            return example_for(options[0], q, root, prop)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        required = schema.get("required") or []
        return {k: example_for(v, q, root, k) for k, v in (schema.get("properties") or {}).items() if k in required}
    if kind == "array":
        return _array_for(schema, q, root, prop)
    if kind == "string":
        return _string_for(schema, q, prop)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1 if "exclusiveMinimum" in schema else 1)
        value = min(low, schema.get("maximum", low))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    return None


def _array_for(schema: dict[str, Any], q: _Question, root: dict[str, Any], prop: str) -> list[Any]:
    items = _resolve(schema.get("items") or {}, root)
    low, high = schema.get("minItems", 0), schema.get("maxItems")
    if items.get("enum"):
        chosen = best_matches(items["enum"], q.words) or list(items["enum"])
        chosen += [v for v in items["enum"] if v not in chosen][: max(0, low - len(chosen))]
        return chosen[:high] if high is not None else chosen
    return [example_for(items, q, root, prop) for _ in range(low)]


def _string_for(schema: dict[str, Any], q: _Question, prop: str) -> str:
    if schema.get("format") in FORMATS:
        return FORMATS[schema["format"]]
    email = re.search(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", q.text)
    if "email" in prop.lower() and email:
        return email.group()
    text = q.text.strip() or "n/a"
    if schema.get("maxLength") is not None:
        text = text[: schema["maxLength"]]
    return text.ljust(schema.get("minLength", 0), ".")


@dataclass(frozen=True)
class Fact:
    source: str
    key: str
    value: str


def _short(value: Any) -> str | None:
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str) and 0 < len(value) <= 40 and "\n" not in value and "<untrusted>" not in value:
        return value
    return None


def _walk(value: Any, source: str | None, key: str, out: list[Fact]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, k if SLICE_NAME.match(k) and isinstance(v, dict | list) else source, k, out)
    elif isinstance(value, list):
        for item in value[:5]:
            named = item.get("slice") or item.get("name") if isinstance(item, dict) else None
            _walk(item, named if isinstance(named, str) and SLICE_NAME.match(named) else source, key, out)
    elif source is not None and (short := _short(value)) is not None and short != source:
        out.append(Fact(source, key, short))


def facts_in(text: str, source: str | None) -> list[Fact]:
    """Short values in a tool message (or a JSON block of a system prompt), each with what to cite:
    the slice name it sits under, else ``source``."""
    found: list[Fact] = []
    decoder, i, parsed = json.JSONDecoder(), 0, False
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        _walk(obj, source, "value", found)
        parsed, i = True, end
    if not parsed and source is not None and text.strip():
        found.append(Fact(source, "result", text.strip().splitlines()[0][:80]))
    return list(dict.fromkeys(found))


class Hosted:
    """A hosted model deciding by itself, deterministically.

    - ``response_format`` json_schema, or ``tool_choice`` naming a function: a value built
      from the schema (enums picked by the question's words), as content or as that call.
    - A user turn without tool results, tools offered: it calls the tools whose name and
      description share the most content words with the latest user message (at most 2;
      1 with ``parallel_tool_calls: false``), with arguments satisfying their schema (an
      array of enums gets the values matching the question, else all). No match: it
      answers directly (or calls the first tool under ``tool_choice: "required"``).
    - Otherwise it answers in text, quoting verbatim short values from this turn's tool
      results — or, with none, from JSON in the system prompt — as ``key is value
      [source]``, the source being the slice name the value sits under (``billing.status``)
      or the tool's name; the values whose keys share words with the question come first.
    """

    def __call__(self, chat: Chat) -> Reply:
        q = _Question(chat.latest_user_text, words(chat.latest_user_text))
        if (schema := chat.response_schema) is not None:
            return Reply(content=json.dumps(_conforming(schema, q, "response_format")))
        if chat.forced_tool:
            return Reply(tool_calls=(self._call(chat, chat.forced_tool, q),))
        if chat.json_mode:
            return Reply(content=json.dumps({"answer": answer_text(chat)}))
        if chat.tool_results or not chat.may_call_tools:
            return Reply(content=answer_text(chat))
        limit = 1 if chat.body.get("parallel_tool_calls") is False else 2
        texts = [f"{t['name'].replace('_', ' ')} {t.get('description', '')}" for t in chat.tools]
        scores = _scores(texts, q.words)
        top = max(scores)
        picked = [i for i, s in enumerate(scores) if s == top and s > 0][:limit]
        if not picked and chat.body.get("tool_choice") == "required":
            picked = [0]
        if not picked:
            return Reply(content=answer_text(chat))
        return Reply(tool_calls=tuple(self._call(chat, chat.tools[i]["name"], q) for i in picked))

    @staticmethod
    def _call(chat: Chat, name: str, q: _Question) -> ToolCall:
        fn = next(t for t in chat.tools if t["name"] == name)
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        return ToolCall(name, json.dumps(_conforming(schema, q, f"tool {name}")))


def _conforming(schema: dict[str, Any], q: _Question, what: str) -> Any:
    """Rule 4: the hosted model's own output always satisfies the schema it was given."""
    value = example_for(schema, q, schema)
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        raise ApiError(500, f"Hosted (the test endpoint's model) could not build a value for {what} that "
                       f"satisfies its schema: {error.message}. Script the answer with Structured/CallTool.")
    return value


def answer_text(chat: Chat) -> str:
    """A text answer from this turn's tool results (else the system prompt's JSON), citing sources."""
    facts = [f for r in chat.tool_results for f in facts_in(r.content, r.tool_name)]
    if not facts and not chat.tool_results:
        facts = [f for m in chat.messages if m["role"] in ("system", "developer") for f in facts_in(_text(m), None)]
    if not facts:
        return ("The tools returned nothing I can quote." if chat.tool_results
                else "I have no data to answer that from.")
    question = words(chat.latest_user_text)
    ranked = sorted(facts, key=lambda f: -len(question & words(f"{f.key} {f.source}")))
    return "Here is what I found: " + "; ".join(f"{f.key} is {f.value} [{f.source}]"
                                                 for f in ranked[:MAX_FACTS]) + "."


# ------------------------------------------------------------------ scripted behaviours

@dataclass(frozen=True)
class Answer:
    """Answer with this text, no tool calls (whatever the request asks for)."""

    text: str

    def __call__(self, chat: Chat) -> Reply:
        return Reply(content=self.text)


def _arguments(args: dict[str, Any] | str) -> str:
    return args if isinstance(args, str) else json.dumps(args)


@dataclass(frozen=True)
class CallTool:
    """One call of tool ``name``: ``args`` as a dict, or a raw string sent verbatim (e.g.
    malformed JSON). The schema is not consulted: this is how a model misbehaves."""

    name: str
    args: dict[str, Any] | str = field(default_factory=dict)

    def __call__(self, chat: Chat) -> Reply:
        return Reply(tool_calls=(ToolCall(self.name, _arguments(self.args)),))


@dataclass(frozen=True)
class Loop(CallTool):
    """Call the same tool again on every request, whatever the history (a runaway loop)."""


@dataclass(frozen=True)
class UnknownTool:
    """Call a tool that was not offered."""

    name: str = "lookup_everything"
    args: dict[str, Any] | str = field(default_factory=dict)

    def __call__(self, chat: Chat) -> Reply:
        offered = {t["name"] for t in chat.tools}
        name = self.name if self.name not in offered else f"{self.name}_unoffered"
        return Reply(tool_calls=(ToolCall(name, _arguments(self.args)),))


@dataclass(frozen=True)
class HttpError:
    """Fail with ``status`` and an OpenAI-style error body; a 429 carries ``retry-after: 0``
    and ``retry-after-ms`` (at least 1: the openai client treats 0 as "not given" and falls
    back to its own 0.5-8 s backoff)."""

    status: int
    message: str = "The server had an error while processing your request."
    type: str | None = None
    code: str | None = None
    retry_after_s: float = 0.0

    def __call__(self, chat: Chat) -> Reply:
        headers = {}
        if self.status == 429:
            headers = {"retry-after": str(math.ceil(self.retry_after_s)),
                       "retry-after-ms": str(max(1, round(self.retry_after_s * 1000)))}
        code = self.code or ("rate_limit_exceeded" if self.status == 429 else None)
        raise ApiError(self.status, self.message, type_=self.type, code=code, headers=headers)


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` (interrupted by the endpoint closing: then no answer is sent), then
    answer as ``then`` (default: the endpoint's behaviour)."""

    seconds: float
    then: Behaviour | None = None

    def __call__(self, chat: Chat) -> Reply | None:
        if chat.wait(self.seconds):
            return None
        then = self.then or chat.default or Hosted()
        return then(chat)


@dataclass(frozen=True)
class Structured:
    """The structured answer: ``value`` (JSON-encoded unless a string, sent verbatim) as the
    content under ``response_format``, or as the arguments of the forced tool under a
    ``tool_choice`` naming a function (langchain's ``function_calling`` method)."""

    value: Any

    def __call__(self, chat: Chat) -> Reply:
        raw = _arguments(self.value)
        if chat.forced_tool:
            return Reply(tool_calls=(ToolCall(chat.forced_tool, raw),))
        return Reply(content=raw)


@dataclass(frozen=True)
class Replies:
    """Answer from a function of the request body returning an OpenAI assistant message
    (``{"content": ..., "tool_calls": [wire tool calls]}``)."""

    replies: Callable[[dict[str, Any]], dict[str, Any]]

    def __call__(self, chat: Chat) -> Reply:
        message = self.replies(chat.body)
        calls = tuple(ToolCall(c["function"]["name"], c["function"]["arguments"], c.get("id"))
                      for c in message.get("tool_calls") or [])
        return Reply(content=message.get("content"), tool_calls=calls)


# ------------------------------------------------------------------ the wire

def approx_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a request (see the module docstring, rule 5)."""
    total = 0
    for m in body["messages"]:
        parts = [m["role"], m.get("name") or "", _text(m), m.get("tool_call_id") or ""]
        parts.append(json.dumps(m["tool_calls"]) if m.get("tool_calls") else "")
        total += TOKENS_PER_MESSAGE + sum(approx_tokens(p) for p in parts)
    for extra in ("tools", "response_format"):
        if body.get(extra):
            total += approx_tokens(json.dumps(body[extra]))
    return total


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def completion_json(reply: Reply, number: int, body: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` object for ``reply`` (tool call ids filled in)."""
    calls = [{"id": c.id or f"call_{number:04d}_{i}", "type": "function",
              "function": {"name": c.name, "arguments": c.arguments}} for i, c in enumerate(reply.tool_calls)]
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None, "annotations": []}
    if calls:
        message["tool_calls"] = calls
    completion = approx_tokens(reply.content or "") + (approx_tokens(json.dumps(calls)) if calls else 0)
    return {"id": f"chatcmpl-{number:06d}", "object": "chat.completion", "created": 1768478400,
            "model": body["model"], "service_tier": "default", "system_fingerprint": "fp_strict_endpoint",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": _usage(prompt_tokens(body), completion)}


def _pieces(text: str, size: int = 12) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def stream_chunks(completion: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` events of a completion, as the hosted API streams them."""
    base = {k: completion[k] for k in ("id", "created", "model", "service_tier", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice, message = completion["choices"][0], completion["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**out, "usage": None} if include_usage else out

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in _pieces(message["content"] or ""):
        yield chunk({"content": piece})
    for i, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                     "function": {"name": call["function"]["name"], "arguments": ""}}]})
        for piece in _pieces(call["function"]["arguments"]):
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    yield chunk({}, choice["finish_reason"])
    if include_usage:
        yield {**base, "choices": [], "usage": completion["usage"]}


# ------------------------------------------------------------------ the server

@dataclass
class Request:
    """One request as received, and what it was answered."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names."""
    body: dict[str, Any] | None = None
    """The JSON body (None when it was not JSON)."""
    status: int | None = None
    """The response status; None while in flight, or when the endpoint closed before answering."""
    error: str | None = None
    """The error message sent with a non-200 status."""
    response: dict[str, Any] | None = None
    """The ``chat.completion`` sent (for a stream: the completion its chunks add up to)."""

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.response["usage"] if self.response else None

    def __getitem__(self, key: str) -> Any:
        """``request["body"]``, ``["path"]``, ``["auth"]`` (the Authorization header): the
        dict-shaped records older tests read."""
        return self.headers.get("authorization") if key == "auth" else getattr(self, key)


class _Server(ThreadingHTTPServer):
    endpoint: StrictOpenAIEndpoint


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # seconds a connection may stay silent: a stuck client never blocks close() for long

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.server.endpoint._serve(self)

    do_GET = do_PUT = do_DELETE = do_POST  # noqa: N815 - answered with the hosted API's 404

    def log_message(self, *args: Any) -> None:
        pass


class StrictOpenAIEndpoint:
    """A local Chat Completions server enforcing the hosted API's rules (module docstring).

    Args:
        behaviour: how the model answers when no scripted step is queued (``Hosted()``).
        require_strict_tools: reject a tool without ``strict: true`` (rule 3).
        reject_defaults: also reject ``default`` in strict schemas, as Azure OpenAI does.
        api_key: when given, any other bearer token gets the hosted API's 401.
        model: the model name ``chat_model()`` asks for (any name is served).
    """

    def __init__(self, behaviour: Behaviour | None = None, *, require_strict_tools: bool = True,
                 reject_defaults: bool = False, api_key: str | None = None, model: str = "strict-test-model"):
        self.behaviour: Behaviour = behaviour or Hosted()
        self.require_strict_tools, self.reject_defaults = require_strict_tools, reject_defaults
        self.api_key, self.model = api_key, model
        self.requests: list[Request] = []
        self._steps: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.endpoint = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="strict-openai-endpoint", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, *steps: Behaviour) -> None:
        """Queue behaviours for the next accepted requests, one step per request."""
        with self._lock:
            self._steps.extend(steps)

    def usage(self) -> list[dict[str, Any]]:
        """The usage block of each successful completion, in order."""
        return [r.usage for r in list(self.requests) if r.status == 200 and r.usage]

    def chat_model(self, **kwargs: Any) -> Any:
        """A ``ChatOpenAI`` pointed at this endpoint (keyword arguments passed on)."""
        from langchain_openai import ChatOpenAI

        settings = {"base_url": self.base_url, "api_key": self.api_key or "sk-strict-test", "model": self.model,
                    "max_retries": 0, **kwargs}
        return ChatOpenAI(**settings)

    def start(self) -> StrictOpenAIEndpoint:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving: interrupt any ``Delay``, wait for in-flight requests, free the port."""
        self._closing.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StrictOpenAIEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- one request

    def _serve(self, h: _Handler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        record = Request(h.command, h.path, {k.lower(): v for k, v in h.headers.items()})
        self.requests.append(record)
        try:
            reply = self._answer(h, raw, record)
        except ApiError as e:
            record.status, record.error = e.status, e.message
            self._send(h, e.status, json.dumps(e.body()).encode(), "application/json", e.headers)
            return
        if reply is None:
            return  # closing: no answer
        body = record.body or {}
        record.response = completion_json(reply, next(self._numbers), body)
        record.status = 200
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            events = b"".join(f"data: {json.dumps(c)}\n\n".encode()
                              for c in stream_chunks(record.response, include))
            self._send(h, 200, events + b"data: [DONE]\n\n", "text/event-stream; charset=utf-8", {})
        else:
            self._send(h, 200, json.dumps(record.response).encode(), "application/json", {})

    def _answer(self, h: _Handler, raw: bytes, record: Request) -> Reply | None:
        if h.command != "POST" or h.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            raise ApiError(404, f"Invalid URL ({h.command} {h.path})")
        self._check_auth(record.headers.get("authorization", ""))
        try:
            record.body = json.loads(raw)
        except ValueError as e:
            raise _bad(BAD_JSON) from e
        validate_request(record.body, require_strict_tools=self.require_strict_tools,
                         reject_defaults=self.reject_defaults)
        with self._lock:
            step = self._steps.popleft() if self._steps else self.behaviour
        return step(Chat(record.body, self._closing.wait, self.behaviour))

    def _check_auth(self, header: str) -> None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, NO_API_KEY)
        if self.api_key is not None and key.strip() != self.api_key:
            raise ApiError(401, f"Incorrect API key provided: {key[:6]}***. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.", code="invalid_api_key")

    def _send(self, h: _Handler, status: int, payload: bytes, content_type: str, headers: dict[str, str]) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(payload)))
            h.send_header("x-request-id", f"req_{len(self.requests):06d}")
            for name, value in headers.items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout fired during a Delay)


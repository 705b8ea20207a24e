"""The strict OpenAI-compatible test endpoint: it rejects what the hosted API rejects, in
its words, answers like a hosted model by default, and misbehaves when scripted — seen
through langchain-openai's ChatOpenAI and through raw HTTP."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field, ValidationError

from .openai_endpoint import (
    Answer,
    CallTool,
    Delay,
    Hosted,
    HttpError,
    Loop,
    Replies,
    StrictOpenAIEndpoint,
    Structured,
    UnknownTool,
    approx_tokens,
    prompt_tokens,
    strict_schema_problem,
)


def _tool(name: str, description: str, enum: list[str], *, strict: bool = True) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description, "strict": strict,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["slices"],
                       "properties": {"slices": {"type": "array", "description": "Slices to read.",
                                                 "items": {"type": "string", "enum": enum}}}}}}


BILLING = _tool("read_billing", "Read the customer's billing: subscription status, invoices and payment method.",
                ["billing.status", "billing.invoices"])
SUPPORT = _tool("read_support", "Read the customer's support tickets and satisfaction scores.",
                ["support.summary", "support.tickets"])
PAST_DUE = {"billing.status": {"status": "past_due", "balance": 15000.0, "method": "card"}}


@pytest.fixture
def strict_openai():
    with StrictOpenAIEndpoint() as endpoint:
        yield endpoint


def post(endpoint: StrictOpenAIEndpoint, body: dict, *, key: str | None = "sk-test") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{endpoint.base_url}/chat/completions", json=body, headers=headers, timeout=10)


def chat(messages: list[dict], **extra) -> dict:
    return {"model": "gpt-test", "messages": messages, **extra}


USER = {"role": "user", "content": "Is Acme paying?"}
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"id": "call_x", "type": "function",
                        "function": {"name": "read_billing", "arguments": '{"slices": ["billing.status"]}'}}]}


# ------------------------------------------------------------------ rule 1: tool-call pairing

def test_an_unanswered_tool_call_is_the_hosted_apis_400(strict_openai):
    got = post(strict_openai, chat([USER, CALL, {"role": "user", "content": "and?"}], tools=[BILLING]))
    assert got.status_code == 400
    assert got.json() == {"error": {
        "message": "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                   "'tool_call_id'. The following tool_call_ids did not have response messages: call_x",
        "type": "invalid_request_error", "param": "messages.[1].role", "code": None}}
    assert strict_openai.requests[-1].status == 400 and strict_openai.usage() == []


def test_langchain_sees_the_same_400_for_an_unanswered_call(strict_openai):
    model = strict_openai.chat_model().bind_tools([BILLING])
    ai = AIMessage("", tool_calls=[{"name": "read_billing", "args": {"slices": []}, "id": "call_a"},
                                   {"name": "read_billing", "args": {"slices": []}, "id": "call_b"}])
    with pytest.raises(openai.BadRequestError, match="did not have response messages: call_b"):
        model.invoke([HumanMessage("Is Acme paying?"), ai, ToolMessage("{}", tool_call_id="call_a")])
    assert model.invoke([HumanMessage("Is Acme paying?"), ai, ToolMessage("{}", tool_call_id="call_a"),
                         ToolMessage("{}", tool_call_id="call_b")]).content


@pytest.mark.parametrize(("messages", "message"), [
    ([USER, {"role": "tool", "tool_call_id": "call_x", "content": "{}"}],
     "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."),
    ([USER, CALL, {"role": "tool", "tool_call_id": "call_y", "content": "{}"}],
     "Invalid parameter: 'tool_call_id' of 'call_y' not found in 'tool_calls' of previous message."),
    ([USER, CALL, {"role": "user", "content": "wait"}, {"role": "tool", "tool_call_id": "call_x", "content": "{}"}],
     "did not have response messages: call_x"),
    ([USER, CALL, {"role": "tool", "tool_call_id": "call_x", "content": "{}"},
      {"role": "tool", "tool_call_id": "call_x", "content": "{}"}],
     "'tool_call_id' of 'call_x' not found"),
])
def test_tool_messages_answer_the_calls_right_before_them(strict_openai, messages, message):
    got = post(strict_openai, chat(messages, tools=[BILLING]))
    assert got.status_code == 400 and message in got.json()["error"]["message"]


# ------------------------------------------------------------------ rule 2: well-formed requests

@pytest.mark.parametrize(("body", "message"), [
    (chat([{"role": "robot", "content": "hi"}]),
     "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', 'tool', and 'developer'."),
    (chat([{"role": "user"}]), "Missing required parameter: 'messages[0].content'."),
    (chat([USER, CALL, {"role": "tool", "content": "{}"}], tools=[BILLING]),
     "Missing required parameter: 'messages[2].tool_call_id'."),
    (chat([{"role": "user", "content": 42}]), "Invalid type for 'messages[0].content'"),
    (chat([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "Invalid value: 'image_url'. Supported values are: 'text'."),
    (chat([]), "Invalid 'messages': empty array."),
    ({"messages": [USER]}, "you must provide a model parameter"),
    (chat([USER], temprature=0), "Unrecognized request argument supplied: temprature"),
    (chat([USER], tool_choice="auto"), "'tool_choice' is only allowed when 'tools' are specified."),
    (chat([USER], stream_options={"include_usage": True}), "only allowed when 'stream' is enabled"),
    (chat([USER], response_format={"type": "json_object"}), "must contain the word 'json'"),
    (chat([USER, {**CALL, "tool_calls": [{**CALL["tool_calls"][0], "function": {
        "name": "read_billing", "arguments": {"slices": []}}}]}], tools=[BILLING]),
     "Invalid type for 'messages[1].tool_calls[0].function.arguments': expected a string, but got an object"),
])
def test_malformed_requests_are_rejected(strict_openai, body, message):
    got = post(strict_openai, body)
    assert got.status_code == 400, got.text
    assert message in got.json()["error"]["message"]
    assert strict_openai.requests[-1].error == got.json()["error"]["message"]


def test_auth_path_and_json_errors_are_the_hosted_apis(strict_openai):
    assert post(strict_openai, chat([USER]), key=None).status_code == 401
    wrong = httpx.post(f"{strict_openai.base_url}/completions", json=chat([USER]),
                       headers={"Authorization": "Bearer sk-test"})
    assert wrong.status_code == 404 and wrong.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"
    garbled = httpx.post(f"{strict_openai.base_url}/chat/completions", content=b"{not json",
                         headers={"Authorization": "Bearer sk-test"})
    assert garbled.status_code == 400 and "could not parse the JSON body" in garbled.json()["error"]["message"]
    assert [r.status for r in strict_openai.requests] == [401, 404, 400]


def test_a_configured_api_key_is_checked():
    with StrictOpenAIEndpoint(api_key="sk-right") as endpoint:
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided"):
            endpoint.chat_model(api_key="sk-wrong").invoke("hi")
        assert endpoint.chat_model().invoke("hi").content


# ------------------------------------------------------------------ rule 3: tools and strict schemas

def test_a_tool_without_strict_is_rejected_unless_allowed(strict_openai):
    loose = _tool("read_billing", "Read billing.", ["billing.status"], strict=False)
    got = post(strict_openai, chat([USER], tools=[loose]))
    assert got.status_code == 400
    assert got.json()["error"]["message"].startswith("Tool 'read_billing' is not strict")
    assert got.json()["error"]["param"] == "tools[0].function.strict"
    with pytest.raises(openai.BadRequestError, match="is not strict"):
        strict_openai.chat_model().bind_tools([loose["function"]]).invoke("Is Acme paying?")
    with StrictOpenAIEndpoint(require_strict_tools=False) as lenient:
        assert post(lenient, chat([USER], tools=[loose])).status_code == 200


def test_langchains_strict_tools_pass(strict_openai):
    class ReadBilling(BaseModel):
        """Read the customer's billing."""

        slices: list[str] = Field(description="Slices to read.")
        limit: int = 5  # langchain keeps the default in a strict schema: the hosted API accepts it

    ai = strict_openai.chat_model().bind_tools([ReadBilling], strict=True).invoke("What's the billing status?")
    assert ai.tool_calls[0]["name"] == "ReadBilling"
    assert strict_openai.requests[-1].body["tools"][0]["function"]["strict"] is True


def _strict(parameters: dict, name: str = "f") -> dict:
    return {"type": "function", "function": {"name": name, "description": "d", "strict": True,
                                             "parameters": parameters}}


OBJ = {"type": "object", "additionalProperties": False, "required": ["a"], "properties": {"a": {"type": "string"}}}


@pytest.mark.parametrize(("parameters", "message"), [
    ({**OBJ, "additionalProperties": True},
     "Invalid schema for function 'f': In context=(), 'additionalProperties' is required to be supplied and to be "
     "false."),
    ({**OBJ, "required": []},
     "Invalid schema for function 'f': In context=(), 'required' is required to be supplied and to be an array "
     "including every key in properties. Missing 'a'."),
    ({**OBJ, "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}}},
     "In context=('properties', 'a'), 'additionalProperties' is required to be supplied and to be false."),
    ({**OBJ, "properties": {"a": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}}},
     "In context=('properties', 'a'), 'uniqueItems' is not permitted."),
    ({"type": "array", "items": {"type": "string"}},
     "Invalid schema for function 'f': schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'."),
])
def test_strict_schemas_follow_structured_output_rules(strict_openai, parameters, message):
    got = post(strict_openai, chat([USER], tools=[_strict(parameters)]))
    assert got.status_code == 400 and message in got.json()["error"]["message"]
    assert got.json()["error"]["code"] == "invalid_function_parameters"


def test_defaults_are_refused_only_when_asked():
    with_default = {**OBJ, "properties": {"a": {"type": "string", "default": "x"}}}
    assert strict_schema_problem(with_default) is None
    assert strict_schema_problem(with_default, reject_defaults=True) == \
        "In context=('properties', 'a'), 'default' is not permitted."


@pytest.mark.parametrize(("name", "message"), [
    ("read billing", "string does not match pattern. Expected a string that matches the pattern"),
    ("r" * 65, "string too long. Expected a string with maximum length 64, but got a string with length 65"),
])
def test_tool_names_are_checked(strict_openai, name, message):
    got = post(strict_openai, chat([USER], tools=[_strict(OBJ, name)]))
    assert got.status_code == 400 and message in got.json()["error"]["message"]


def test_duplicate_tools_and_unknown_forced_tools_are_rejected(strict_openai):
    assert post(strict_openai, chat([USER], tools=[BILLING, BILLING])).status_code == 400
    forced = chat([USER], tools=[BILLING], tool_choice={"type": "function", "function": {"name": "read_crm"}})
    assert "'read_crm' is not one of the tools" in post(strict_openai, forced).json()["error"]["message"]


# ------------------------------------------------------------------ rule 5: usage

def test_usage_counts_the_whole_prompt(strict_openai):
    model = strict_openai.chat_model()
    short = model.invoke("Is Acme paying?")
    long = model.invoke("Is Acme paying? " * 250)  # 4,000 characters
    with_tools = model.bind_tools([BILLING, SUPPORT]).invoke("Is Acme paying? " * 250)
    short_usage, long_usage, tools_usage = strict_openai.usage()
    assert short.usage_metadata["input_tokens"] == short_usage["prompt_tokens"] < 20
    assert 1000 <= long_usage["prompt_tokens"] <= 1010  # chars / 4, plus the message overhead
    tool_json = json.dumps(strict_openai.requests[-1].body["tools"])
    assert tools_usage["prompt_tokens"] == long_usage["prompt_tokens"] + approx_tokens(tool_json)
    assert tools_usage["prompt_tokens"] == prompt_tokens(strict_openai.requests[-1].body)
    for usage, ai in zip(strict_openai.usage(), (short, long, with_tools), strict=True):
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert ai.usage_metadata["output_tokens"] == usage["completion_tokens"]


# ------------------------------------------------------------------ the hosted model

def test_hosted_picks_the_billing_tool_then_answers_citing_it(strict_openai):
    model = strict_openai.chat_model().bind_tools([SUPPORT, BILLING])
    messages = [SystemMessage("You help support agents."), HumanMessage("What's Acme's billing status?")]
    ai = model.invoke(messages)
    assert [c["name"] for c in ai.tool_calls] == ["read_billing"] and not ai.content
    assert ai.tool_calls[0]["args"] == {"slices": ["billing.status"]}
    Draft202012Validator(BILLING["function"]["parameters"]).validate(ai.tool_calls[0]["args"])
    messages += [ai, ToolMessage(json.dumps(PAST_DUE), tool_call_id=ai.tool_calls[0]["id"])]
    answer = model.invoke(messages)
    assert not answer.tool_calls
    assert "past_due [billing.status]" in answer.content and "15000.0" in answer.content
    assert model.invoke(messages).content == answer.content  # deterministic


def test_hosted_reads_every_enum_value_when_none_matches_and_cites_the_tool_without_slices(strict_openai):
    model = strict_openai.chat_model().bind_tools([SUPPORT, BILLING])
    ai = model.invoke("Is Acme paying their invoices on time? Check billing.")
    assert ai.tool_calls[0]["args"] == {"slices": ["billing.invoices"]}
    ai = model.invoke("Show me billing.")
    assert ai.tool_calls[0]["args"] == {"slices": ["billing.status", "billing.invoices"]}
    tool = ToolMessage('{"status": "active"}', tool_call_id=ai.tool_calls[0]["id"])
    answer = model.invoke([HumanMessage("Show me billing."), ai, tool])
    assert answer.content == "Here is what I found: status is active [read_billing]."


def test_hosted_answers_directly_when_no_tool_matches_and_from_a_context_block(strict_openai):
    model = strict_openai.chat_model().bind_tools([SUPPORT, BILLING])
    assert model.invoke("Write a haiku about autumn").tool_calls == []
    context = "Answer from <customer_context>" + json.dumps({"slices": PAST_DUE}) + "</customer_context>"
    answer = strict_openai.chat_model().invoke([SystemMessage(context), HumanMessage("Is their status ok?")])
    assert answer.content.startswith("Here is what I found: status is past_due [billing.status]")


def test_hosted_calls_at_most_two_tools_and_one_without_parallel_calls(strict_openai):
    question = "Summarise billing and support for Acme"
    both = strict_openai.chat_model().bind_tools([SUPPORT, BILLING]).invoke(question)
    assert [c["name"] for c in both.tool_calls] == ["read_support", "read_billing"]
    one = strict_openai.chat_model().bind_tools([SUPPORT, BILLING], parallel_tool_calls=False).invoke(question)
    assert [c["name"] for c in one.tool_calls] == ["read_support"]


class Verdict(BaseModel):
    category: str = Field(json_schema_extra={"enum": ["billing", "bug", "how_to"]})
    priority: int
    flags: list[str]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_both_ways(strict_openai, method):
    model = strict_openai.chat_model().with_structured_output(Verdict, method=method, strict=True)
    verdict = model.invoke("The card was declined, a billing problem")
    assert verdict == Verdict(category="billing", priority=1, flags=[])
    body = strict_openai.requests[-1].body
    assert ("response_format" in body) == (method == "json_schema")
    assert ("tool_choice" in body) == (method == "function_calling")
    strict_openai.script(Structured({"category": "bug", "priority": 2, "flags": ["vip"]}))
    assert model.invoke("anything") == Verdict(category="bug", priority=2, flags=["vip"])


def test_structured_raw_text_breaks_parsing_as_a_truncated_answer_would(strict_openai):
    strict_openai.script(Structured('{"category": "bu'), Structured('{"category": "bu'))
    with pytest.raises(ValidationError, match="Invalid JSON"):  # openai's parse() of the content
        strict_openai.chat_model().with_structured_output(Verdict).invoke("anything")
    tool_way = strict_openai.chat_model().with_structured_output(
        Verdict, method="function_calling", strict=True, include_raw=True)
    out = tool_way.invoke("anything")  # langchain keeps the broken call aside and parses nothing
    assert out["parsed"] is None and out["raw"].invalid_tool_calls[0]["args"] == '{"category": "bu'


class Evidence(BaseModel):
    slice: str = Field(json_schema_extra={"enum": ["billing.status", "support.summary"]})
    fact: str = Field(max_length=20)


class Triage(BaseModel):
    priority: str = Field(json_schema_extra={"enum": ["P1", "P2", "P3"]})
    evidence: list[Evidence] = Field(min_length=1)
    note: str | None = None


def test_hosted_output_satisfies_nested_strict_schemas(strict_openai):
    model = strict_openai.chat_model().with_structured_output(Triage, method="function_calling", strict=True)
    triage = model.invoke("A P1: the support summary says the card was declined")
    assert triage.priority == "P1" and triage.evidence[0].slice == "support.summary"
    sent = strict_openai.requests[-1]
    schema = sent.body["tools"][0]["function"]["parameters"]
    arguments = sent.response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    Draft202012Validator(schema).validate(json.loads(arguments))


# ------------------------------------------------------------------ scripted misbehaviour

def test_each_step_answers_one_request_then_the_behaviour_resumes(strict_openai):
    model = strict_openai.chat_model().bind_tools([BILLING])
    strict_openai.script(Answer("Just text."), CallTool("read_billing", {"slices": ["billing.nope"]}),
                         CallTool("read_billing", '{"slices": ["billing.st'), UnknownTool())
    assert model.invoke("billing status?").content == "Just text."
    bad_enum = model.invoke("billing status?")
    assert bad_enum.tool_calls[0]["args"] == {"slices": ["billing.nope"]}  # the schema is not consulted
    malformed = model.invoke("billing status?")
    assert malformed.tool_calls == []
    assert malformed.invalid_tool_calls[0]["args"] == '{"slices": ["billing.st'
    unknown = model.invoke("billing status?")
    assert unknown.tool_calls[0]["name"] == "lookup_everything"
    assert model.invoke("billing status?").tool_calls[0]["name"] == "read_billing"  # Hosted again


def test_an_invalid_tool_call_must_be_answered_too(strict_openai):
    model = strict_openai.chat_model().bind_tools([BILLING])
    strict_openai.script(CallTool("read_billing", "{not json"))
    ai = model.invoke("billing status?")
    with pytest.raises(openai.BadRequestError, match="did not have response messages"):
        model.invoke([HumanMessage("billing status?"), ai, HumanMessage("well?")])
    call_id = ai.invalid_tool_calls[0]["id"]
    error = ToolMessage("Invalid JSON arguments", tool_call_id=call_id, status="error")
    assert model.invoke([HumanMessage("billing status?"), ai, error]).content


def test_replies_answers_from_a_function_of_the_body():
    def replies(body: dict) -> dict:
        return {"content": f"{len(body['messages'])} message(s) to {body['model']}"}

    with StrictOpenAIEndpoint(Replies(replies)) as endpoint:
        assert endpoint.chat_model(model="m-1").invoke("hi").content == "1 message(s) to m-1"
        assert endpoint.requests[0]["auth"] == "Bearer sk-strict-test"  # the dict-style read older tests use


def test_loop_calls_the_same_tool_whatever_the_history():
    with StrictOpenAIEndpoint(Loop("read_billing", {"slices": ["billing.status"]})) as endpoint:
        model = endpoint.chat_model().bind_tools([BILLING])
        messages: list = [HumanMessage("billing?")]
        for _ in range(3):
            ai = model.invoke(messages)
            assert ai.tool_calls[0]["name"] == "read_billing"
            messages += [ai, ToolMessage("{}", tool_call_id=ai.tool_calls[0]["id"])]
        assert len({m.tool_call_id for m in messages if isinstance(m, ToolMessage)}) == 3


def test_429_is_retried_by_the_client_and_every_attempt_is_recorded(strict_openai):
    strict_openai.script(*[HttpError(429, "Rate limit reached for requests")] * 3)
    with pytest.raises(openai.RateLimitError, match="Rate limit reached"):
        strict_openai.chat_model(max_retries=2).invoke("hi")
    assert [r.status for r in strict_openai.requests] == [429, 429, 429]
    assert [r.headers.get("x-stainless-retry-count") for r in strict_openai.requests] == ["0", "1", "2"]
    strict_openai.script(HttpError(429, "Rate limit reached for requests"), HttpError(503, "Overloaded"))
    assert strict_openai.chat_model(max_retries=2).invoke("hi").content
    assert [r.status for r in strict_openai.requests[3:]] == [429, 503, 200]


def test_http_errors_have_the_openai_body_and_headers(strict_openai):
    strict_openai.script(HttpError(429, "Slow down"), HttpError(500))
    limited = post(strict_openai, chat([USER]))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "0"
    assert limited.json() == {"error": {"message": "Slow down", "type": "requests", "param": None,
                                        "code": "rate_limit_exceeded"}}
    assert post(strict_openai, chat([USER])).json()["error"]["type"] == "server_error"


def test_a_rejected_request_uses_no_step(strict_openai):
    strict_openai.script(Answer("scripted"))
    assert post(strict_openai, chat([])).status_code == 400
    assert post(strict_openai, chat([USER])).json()["choices"][0]["message"]["content"] == "scripted"


def test_delay_makes_the_client_time_out_and_close_interrupts_it():
    endpoint = StrictOpenAIEndpoint().start()
    try:
        endpoint.script(Delay(60, Answer("too late")))
        with pytest.raises(openai.APITimeoutError):
            endpoint.chat_model(timeout=0.5).invoke("hi")
        assert endpoint.chat_model().invoke("hi").content  # the endpoint still answers
    finally:
        started = time.monotonic()
        endpoint.close()
    assert time.monotonic() - started < 10, "close() waits for the 60 s delay"
    assert sorted(r.status or 0 for r in endpoint.requests) == [0, 200]  # the delayed one never answered


def test_delay_then_answers():
    with StrictOpenAIEndpoint() as endpoint:
        endpoint.script(Delay(0.01, Answer("after a pause")), Delay(0))
        assert endpoint.chat_model().invoke("hi").content == "after a pause"
        assert endpoint.chat_model().invoke("hi").content == "I have no data to answer that from."


# ------------------------------------------------------------------ rule 6: streaming

def test_streaming_adds_up_to_the_same_answer_with_usage(strict_openai):
    model = strict_openai.chat_model(stream_usage=True).bind_tools([BILLING, SUPPORT])
    messages = [HumanMessage("What's the billing status?")]
    streamed = None
    for chunk in model.stream(messages):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls[0]["name"] == "read_billing"
    assert streamed.tool_calls[0]["args"] == {"slices": ["billing.status"]}
    assert streamed.usage_metadata["input_tokens"] == strict_openai.usage()[-1]["prompt_tokens"]
    messages += [streamed, ToolMessage(json.dumps(PAST_DUE), tool_call_id=streamed.tool_calls[0]["id"])]
    text = "".join(c.content for c in model.stream(messages))
    assert text == model.invoke(messages).content and "[billing.status]" in text
    assert strict_openai.requests[-2].body["stream"] is True


def test_raw_stream_ends_with_a_usage_chunk_and_done(strict_openai):
    body = chat([USER], stream=True, stream_options={"include_usage": True})
    got = post(strict_openai, body)
    assert got.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in got.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_hosted_is_the_default_behaviour():
    assert isinstance(StrictOpenAIEndpoint().behaviour, Hosted)

"""The per-source LangChain tools: model-visible schema, injected runtime, slices and gaps."""

import json

import pytest
from pydantic import ValidationError

from tools.context.scope import ReadScope
from tools.langchain_tools import (
    BINDING_ARG,
    SOURCE_TOOLS,
    ToolBinding,
    bind_call,
    make_source_tools,
)
from tools.settings import SOURCE_NAMES, SourceConfig
from tools.slices import slices_of


def runtime(r, ref: str, settings=None) -> ToolBinding:
    customer, _ = r.index.resolve(ref)
    return ToolBinding(scope=ReadScope.build(settings or r.settings, r.clock), customer=customer)


def call(source: str, rt: ToolBinding, **args) -> dict:
    out = SOURCE_TOOLS[source].invoke({**args, BINDING_ARG: rt})
    json.dumps(out)  # JSON-serialisable as returned
    return out


def test_model_sees_only_slices_restricted_to_the_source():
    for source, tool in SOURCE_TOOLS.items():
        schema = tool.tool_call_schema.model_json_schema()
        assert set(schema["properties"]) == {"slices"}, source
        assert set(tool.args) == {"slices"}, source
        slices = schema["properties"]["slices"]
        assert slices["type"] == "array"
        items = slices["items"]
        allowed = items.get("enum") or [items["const"]]
        assert allowed == slices_of(source)
        assert slices["default"] == slices_of(source)
        assert schema.get("required", []) == []
        text = json.dumps(schema)
        for hidden in (BINDING_ARG, "customer", "settings", "principal", "store", "guard"):
            assert hidden not in schema["properties"] and f'"{hidden}"' not in text, (source, hidden)
        assert "untrusted" in tool.description and "gap" in tool.description


def test_billing_tool_reads_past_due_status(sqlite_ready):
    rt = runtime(sqlite_ready, "acme.com")
    out = call("billing", rt, slices=["billing.status"])
    assert out["customer_id"] == rt.customer.customer_id
    assert out["source"] == "billing"
    assert out["gaps"] == []
    assert list(out["slices"]) == ["billing.status"]
    assert out["slices"]["billing.status"]["status"] == "past_due"


def test_default_reads_every_slice_of_the_source(sqlite_ready):
    out = call("billing", runtime(sqlite_ready, "acme.com"))
    assert list(out["slices"]) + [g["slice"] for g in out["gaps"]] == slices_of("billing")


def test_crm_tool_without_a_crm_record_returns_not_found_gaps(sqlite_ready):
    out = call("crm", runtime(sqlite_ready, "hooli.xyz"))
    assert out["slices"] == {}
    assert [g["slice"] for g in out["gaps"]] == slices_of("crm")
    assert {g["kind"] for g in out["gaps"]} == {"not_found"}


def test_disconnected_crm_returns_not_connected_gaps_with_remedy(sqlite_ready):
    settings = sqlite_ready.settings.model_copy(deep=True)
    settings.sources["crm"] = SourceConfig(enabled=False)
    out = call("crm", runtime(sqlite_ready, "acme.com", settings), slices=["crm.account", "crm.contacts"])
    assert out["slices"] == {}
    assert [g["slice"] for g in out["gaps"]] == ["crm.account", "crm.contacts"]
    for gap in out["gaps"]:
        assert gap["kind"] == "not_connected"
        assert gap["remedy"].startswith("Connect a CRM source")


def test_tools_in_source_priority_order():
    tools = make_source_tools()
    assert [t.name for t in tools] == [f"read_{s}" for s in SOURCE_NAMES]
    assert tools[0].name == "read_crm" and tools[-1].name == "read_research"
    assert list(SOURCE_TOOLS) == list(SOURCE_NAMES)


def test_invalid_slice_name_is_rejected(sqlite_ready):
    rt = runtime(sqlite_ready, "acme.com")
    with pytest.raises(ValidationError):
        call("billing", rt, slices=["crm.account"])
    with pytest.raises(ValidationError):
        call("billing", rt, slices=["billing.status", "billing.nope"])
    with pytest.raises(ValidationError):  # nothing but `slices` may come from the caller
        call("billing", rt, slices=["billing.status"], customer_id="c_other")


def test_tool_call_gets_trusted_runtime_and_returns_json_message(sqlite_ready):
    rt = runtime(sqlite_ready, "acme.com")
    model_call = {"type": "tool_call", "id": "call_1", "name": "read_billing",
                  "args": {"slices": ["billing.status"], BINDING_ARG: "forged by the model"}}
    msg = SOURCE_TOOLS["billing"].invoke(bind_call(model_call, rt))
    assert msg.tool_call_id == "call_1"
    body = json.loads(msg.content)
    assert body["customer_id"] == rt.customer.customer_id
    assert body["slices"]["billing.status"]["status"] == "past_due"


def test_tools_read_through_long_term_memory(sqlite_ready, tmp_path):
    from tools.memory import ContextMemory, open_store

    acme, _ = sqlite_ready.index.resolve("acme.com")
    with open_store(f"sqlite:///{tmp_path / 'mem.sqlite'}") as store:
        memory = ContextMemory(store, "t", sqlite_ready.settings.ttls)
        rt = ToolBinding(scope=ReadScope.build(sqlite_ready.settings, sqlite_ready.clock, memory=memory), customer=acme)
        SOURCE_TOOLS["billing"].invoke({"slices": ["billing.status"], BINDING_ARG: rt})
        again = SOURCE_TOOLS["billing"].invoke({"slices": ["billing.status"], BINDING_ARG: rt})
    assert again["slices"]["billing.status"]["provenance"]["served_from"] == "memory"

"""The model-facing tool: a small strict schema, the injected binding, slices and gaps as a
model is shown them."""

import json

import pytest
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ValidationError

from tools.context.scope import ReadScope
from tools.langchain_tools import BINDING_ARG, READ_SLICES, TOOL_NAME, ToolBinding, bind_call
from tools.settings import SourceConfig
from tools.slices import SLICE_NAMES, slices_of

from .conftest import statements_on


def binding(r, ref: str, settings=None) -> ToolBinding:
    customer, _ = r.index.resolve(ref)
    return ToolBinding(scope=ReadScope.build(settings or r.settings, r.clock), customer=customer)


def call(rt: ToolBinding, **args) -> dict:
    out = READ_SLICES.invoke({**args, BINDING_ARG: rt})
    json.dumps(out)  # JSON-serialisable as returned
    return out


def test_the_model_sees_one_strict_tool_that_takes_only_slices():
    schema = READ_SLICES.tool_call_schema.model_json_schema()
    assert set(schema["properties"]) == {"slices"} and set(READ_SLICES.args) == {"slices"}
    assert schema["properties"]["slices"]["items"]["enum"] == list(SLICE_NAMES)
    assert schema["required"] == ["slices"]
    definition = convert_to_openai_tool(READ_SLICES, strict=True)
    params = definition["function"]["parameters"]
    assert definition["function"]["strict"] is True and params["additionalProperties"] is False
    text = json.dumps(definition)
    for hidden in (BINDING_ARG, "customer", "settings", "principal", "store", "guard"):
        assert f'"{hidden}"' not in text, hidden
    assert "untrusted" in READ_SLICES.description and "gap" in READ_SLICES.description
    for name in SLICE_NAMES:  # every slice is described, by name
        assert name in READ_SLICES.description
    assert count_tokens_approximately([], tools=[definition]) <= 800  # the whole model-facing surface


def test_reads_billing_status(sqlite_ready):
    rt = binding(sqlite_ready, "acme.com")
    out = call(rt, slices=["billing.status"])
    assert out["customer"] == "Acme Corp" and out["as_of"].startswith("2026-01-15")
    assert out["gaps"] == []
    assert list(out["slices"]) == ["billing.status"]
    assert out["slices"]["billing.status"]["status"] == "past_due"
    assert out["slices"]["billing.status"]["_from"]["updated"].startswith("2026-")


def test_slices_come_back_in_priority_order_without_duplicates(sqlite_ready):
    out = call(binding(sqlite_ready, "acme.com"), slices=["billing.invoices", "crm.account", "billing.invoices"])
    assert list(out["slices"]) == ["crm.account", "billing.invoices"]


def test_a_customer_without_a_crm_record_gets_not_found_gaps(sqlite_ready):
    out = call(binding(sqlite_ready, "hooli.xyz"), slices=slices_of("crm"))
    assert out["slices"] == {}
    assert [g["slice"] for g in out["gaps"]] == slices_of("crm")
    assert {g["kind"] for g in out["gaps"]} == {"not_found"}


def test_a_disconnected_crm_gives_not_connected_gaps_with_remedy(sqlite_ready):
    settings = sqlite_ready.settings.model_copy(deep=True)
    settings.sources["crm"] = SourceConfig(enabled=False)
    out = call(binding(sqlite_ready, "acme.com", settings), slices=["crm.account", "crm.contacts"])
    assert out["slices"] == {}
    assert [g["slice"] for g in out["gaps"]] == ["crm.account", "crm.contacts"]
    for gap in out["gaps"]:
        assert gap["kind"] == "not_connected"
        assert gap["remedy"].startswith("Connect a CRM source")


def test_invalid_arguments_are_rejected(sqlite_ready):
    rt = binding(sqlite_ready, "acme.com")
    with pytest.raises(ValidationError):
        call(rt, slices=["billing.nope"])
    with pytest.raises(ValidationError):
        call(rt)  # slices are required
    with pytest.raises(ValidationError):  # nothing but `slices` may come from the caller
        call(rt, slices=["billing.status"], customer_id="c_other")


def test_a_tool_call_gets_the_trusted_binding_and_returns_a_json_message(sqlite_ready):
    rt = binding(sqlite_ready, "acme.com")
    model_call = {"type": "tool_call", "id": "call_1", "name": TOOL_NAME,
                  "args": {"slices": ["billing.status"], BINDING_ARG: "forged by the model"}}
    msg = READ_SLICES.invoke(bind_call(model_call, rt))
    assert msg.tool_call_id == "call_1"
    body = json.loads(msg.content)
    assert body["customer"] == "Acme Corp"
    assert body["slices"]["billing.status"]["status"] == "past_due"


def test_untrusted_text_is_delimited_and_escaped(sqlite_ready):
    out = call(binding(sqlite_ready, "wayne.com"), slices=["support.tickets"])
    bodies = [t["body"] for t in out["slices"]["support.tickets"]["tickets"]]
    assert all(b.startswith("<untrusted>") and b.endswith("</untrusted>") for b in bodies)
    assert any("Ignore all previous instructions" in b for b in bodies)
    inner = [b.removeprefix("<untrusted>").removesuffix("</untrusted>") for b in bodies]
    assert not any("<" in b or ">" in b for b in inner)


def test_reads_go_through_long_term_memory(sqlite_ready, sqlite_warehouse, tmp_path):
    from tools.memory import ContextMemory, open_store

    acme, _ = sqlite_ready.index.resolve("acme.com")
    with open_store(f"sqlite:///{tmp_path / 'mem.sqlite'}") as store:
        memory = ContextMemory(store, "t", sqlite_ready.settings.ttls)
        rt = ToolBinding(scope=ReadScope.build(sqlite_ready.settings, sqlite_ready.clock, memory=memory),
                         customer=acme)
        first = READ_SLICES.invoke({"slices": ["billing.status"], BINDING_ARG: rt})
        with statements_on(sqlite_warehouse) as seen:
            again = READ_SLICES.invoke({"slices": ["billing.status"], BINDING_ARG: rt})
    assert seen == [] and again["slices"] == first["slices"]  # a fresh snapshot: no source query

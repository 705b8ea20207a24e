"""Test doubles for a real model: a scripted chat model, and a local OpenAI-compatible
HTTP endpoint that langchain-openai talks to over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from .openai_endpoint import Replies, StrictOpenAIEndpoint

Script = Callable[[list[BaseMessage], list[str]], AIMessage]


class ScriptedChatModel(BaseChatModel):
    """Replies from a script: a function of (messages, bound tool names) → AIMessage.
    Records every call so tests can check what the model was shown."""

    model_name: str = "scripted"
    _script: Script = PrivateAttr()
    calls: list[dict[str, Any]] = []

    def __init__(self, script: Script, **kw: Any):
        super().__init__(**kw)
        self._script = script
        self.calls = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kw: Any):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kw)

    def _generate(self, messages, stop=None, run_manager=None, **kw) -> ChatResult:
        names = [t["function"]["name"] for t in kw.get("tools") or []]
        self.calls.append({"messages": list(messages), "tools": names})
        return ChatResult(generations=[ChatGeneration(message=self._script(list(messages), names))])


class OpenAICompatibleServer(StrictOpenAIEndpoint):
    """The strict endpoint (``tests/openai_endpoint.py``) answering from ``replies``, a function
    of the request body returning an OpenAI message ({"content": ..., "tool_calls": [...]});
    tools need not be strict. ``requests[i]["body"|"path"|"auth"]`` still read as before."""

    def __init__(self, replies: Callable[[dict[str, Any]], dict[str, Any]]):
        super().__init__(Replies(replies), require_strict_tools=False)


def tool_call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A tool call in OpenAI wire format."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

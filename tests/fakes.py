"""Test doubles for a real model: a scripted chat model, and a local OpenAI-compatible
HTTP endpoint that langchain-openai talks to over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

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


class OpenAICompatibleServer:
    """``POST /v1/chat/completions`` on loopback, answering from a script of response
    messages (OpenAI JSON: {"content": ..., "tool_calls": [...]}) and recording requests."""

    def __init__(self, replies: Callable[[dict[str, Any]], dict[str, Any]]):
        self.replies = replies
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                message = outer.replies(body)
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                payload = json.dumps({
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": message.get("content"),
                                             **({"tool_calls": message["tool_calls"]}
                                                if message.get("tool_calls") else {})}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> OpenAICompatibleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def tool_call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A tool call in OpenAI wire format."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

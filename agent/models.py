"""Chat models: the offline deterministic model (default) or any OpenAI-compatible endpoint.

Every failure to get an answer from an endpoint is one exception, :class:`ModelError`, whose
message is one line naming the model, the endpoint and the cause::

    model gpt-4o-mini at http://127.0.0.1:5501/v1: 429 Too Many Requests after 3 attempts (rate limited): …

The translation happens here, in the chat model :func:`chat_model` returns (a ``ChatOpenAI``
whose generate and stream methods turn the openai client's errors into ``ModelError``), so
every graph call — ``invoke``, ``bind_tools(...).invoke``, ``with_structured_output`` — and
every interface above them sees the same error. :class:`ModelConfigError`, its subclass, is
a model that cannot be used at all (no ``OPENAI_API_KEY``, a malformed name): raised before
any request is sent.

Retries (``CUSTCTX_MODEL_MAX_RETRIES``) are the openai client's: exponential backoff with
jitter, ``Retry-After`` honoured, on 408, 409, 429, 5xx, timeouts and connection errors
only. A request rate (``CUSTCTX_MODEL_REQUESTS_PER_SECOND``) is one token bucket per process
(:func:`rate_limiter`), shared by every model built with it — every concurrent review of a
batch waits on the same bucket.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel

from tools.settings import Settings

if TYPE_CHECKING:
    from langchain_core.rate_limiters import BaseRateLimiter

OFFLINE_NAMES = ("offline", "offline-deterministic")
DEFAULT_ENDPOINT = "https://api.openai.com/v1"
MODEL_ERROR_TEMPLATE = "model {model} at {endpoint}: {cause}"
STATUS_HINTS = {400: "request rejected", 401: "API key refused: check OPENAI_API_KEY", 403: "permission denied",
                404: "not found: check the model name, and that OPENAI_BASE_URL ends in /v1",
                408: "request timeout", 409: "conflict", 413: "request too large", 422: "request rejected",
                429: "rate limited"}
_MAX_DETAIL = 200


class ModelError(RuntimeError):
    """The chat model gave no answer; the message is one line: model, endpoint, cause.

    Attributes:
        model: The model name asked for.
        endpoint: The endpoint's base URL.
        cause: What went wrong, e.g. ``500 Internal Server Error after 3 attempts (server error)``.
        status: The endpoint's HTTP status, when it answered with an error.
        attempts: Requests sent, retries included (1 when the failure came before or without retries).
    """

    def __init__(self, model: str, endpoint: str, cause: str, *, status: int | None = None, attempts: int = 1):
        super().__init__(MODEL_ERROR_TEMPLATE.format(model=model, endpoint=endpoint, cause=cause))
        self.model, self.endpoint, self.cause, self.status, self.attempts = model, endpoint, cause, status, attempts

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes despite the keyword-only fields
        return (type(self), (self.model, self.endpoint, self.cause), {"status": self.status, "attempts": self.attempts})


class ModelConfigError(ModelError, ValueError):
    """The configured model cannot be used at all (no request was sent); the cause says what to set."""


def endpoint_url() -> str:
    """The base URL an OpenAI-compatible model is reached at (``OPENAI_BASE_URL``, else OpenAI's)."""
    return (os.environ.get("OPENAI_BASE_URL") or DEFAULT_ENDPOINT).rstrip("/")


def chat_model(settings: Settings, name: str | None = None) -> BaseChatModel:
    """The chat model for ``name`` (default ``settings.model``): offline, or OpenAI-compatible.

    Raises:
        ModelConfigError: a malformed model name, or no ``OPENAI_API_KEY`` for a real model.
    """
    name = (name or settings.model).strip()
    if name in OFFLINE_NAMES:
        from agent.offline.model import OfflineDeterministicModel

        return OfflineDeterministicModel(thresholds=settings.thresholds, churn_weights=settings.churn_weights,
                                         commerce=bool(settings.source("commerce").url))
    if not re.fullmatch(r"[\w.:/@+-]{1,200}", name):
        raise ModelConfigError(repr(name[:60]), endpoint_url(), "not a model name (letters, digits and . : / @ + - "
                               "only); or use CUSTCTX_MODEL=offline")
    if not os.environ.get("OPENAI_API_KEY"):
        raise ModelConfigError(name, endpoint_url(), "OPENAI_API_KEY is not set: set it (and OPENAI_BASE_URL for a "
                               "local or non-OpenAI endpoint), or use CUSTCTX_MODEL=offline")
    model: BaseChatModel = _endpoint_model_class()(
        model=name, temperature=0, timeout=settings.model_timeout_s, max_retries=settings.model_max_retries,
        rate_limiter=rate_limiter(settings.model_requests_per_second))
    return model


# ------------------------------------------------------------------ rate limit
_limiters: dict[float, BaseRateLimiter] = {}
_limiters_lock = threading.Lock()


def rate_limiter(requests_per_second: float | None) -> BaseRateLimiter | None:
    """The process's request limiter for this rate (None: no limit). One per rate, so every
    model built with the same setting — every concurrent review of a batch — shares its bucket.
    A bucket of one token: no burst, not even after an idle spell."""
    if not requests_per_second:
        return None
    from langchain_core.rate_limiters import InMemoryRateLimiter

    with _limiters_lock:
        if requests_per_second not in _limiters:
            _limiters[requests_per_second] = InMemoryRateLimiter(
                requests_per_second=requests_per_second, max_bucket_size=1,
                check_every_n_seconds=min(0.1, 0.25 / requests_per_second))
        return _limiters[requests_per_second]


# ------------------------------------------------------------------ errors
def _status_cause(exc: Any, attempts: str) -> tuple[str, int]:
    """``429 Too Many Requests after 3 attempts (rate limited): <the endpoint's message>``."""
    status = int(exc.status_code)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = getattr(exc.response, "reason_phrase", "") or "error"
    hint = STATUS_HINTS.get(status) or ("server error" if status >= 500 else "request failed")
    detail = " ".join(str(getattr(exc, "message", "") or "").split())
    detail = re.sub(r"^Error code: \d+ - ", "", detail)[:_MAX_DETAIL]
    return f"{status} {phrase}{attempts} ({hint})" + (f": {detail}" if detail else ""), status


def _root_cause(exc: BaseException) -> str:
    """The deepest message of an exception chain, e.g. ``[Errno 111] Connection refused``."""
    found, seen = "", set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = " ".join(str(cur).split())
        if text:
            found = text
        cur = cur.__cause__ or cur.__context__
    return found[:_MAX_DETAIL]


def describe_failure(exc: BaseException, timeout_s: Any = None) -> tuple[str, int | None, int]:
    """(cause, HTTP status or None, requests sent) of an openai / langchain model exception."""
    import openai

    request = getattr(exc, "request", None)
    try:
        attempts = int(request.headers.get("x-stainless-retry-count") or 0) + 1 if request is not None else 1
    except (AttributeError, ValueError):
        attempts = 1
    after = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, openai.APIStatusError):
        cause, status = _status_cause(exc, after)
        return cause, status, attempts
    if isinstance(exc, openai.APITimeoutError):
        each = f"no answer within {timeout_s:g} s{' each' if after else ''}; " \
            if isinstance(timeout_s, int | float) else ""
        return f"timed out{after} ({each}CUSTCTX_MODEL_TIMEOUT_S)", None, attempts
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot connect{after} ({_root_cause(exc)})", None, attempts
    text = " ".join(str(exc).split())[:_MAX_DETAIL]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__, None, attempts


def _failures() -> tuple[type[BaseException], ...]:
    """The openai client's errors, and langchain-core's typed model errors where it has them."""
    import openai
    from langchain_core import exceptions

    typed = getattr(exceptions, "ModelError", None)  # not in every langchain-core 1.x
    return (openai.OpenAIError, *([typed] if isinstance(typed, type) else []))


@contextmanager
def _translated(model: Any) -> Iterator[None]:
    """The openai client's and langchain's model errors → :class:`ModelError`."""
    try:
        yield
    except ModelError:
        raise
    except _failures() as exc:
        cause, status, attempts = describe_failure(exc, getattr(model, "request_timeout", None))
        endpoint = str(getattr(model.root_client, "base_url", "") or endpoint_url()).rstrip("/")
        raise ModelError(model.model_name, endpoint, cause, status=status, attempts=attempts) from exc


@cache
def _endpoint_model_class() -> type[BaseChatModel]:
    """``ChatOpenAI`` whose failures are :class:`ModelError` (defined on first use: importing
    langchain-openai costs about a second that the offline model never pays)."""
    from langchain_openai import ChatOpenAI

    class EndpointChatModel(ChatOpenAI):
        """ChatOpenAI; every failure to answer is a ModelError naming the model, endpoint and cause."""

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            with _translated(self):
                return super()._generate(*args, **kwargs)

        async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
            with _translated(self):
                return await super()._agenerate(*args, **kwargs)

        def _stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with _translated(self):
                yield from super()._stream(*args, **kwargs)

        async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            with _translated(self):
                async for chunk in super()._astream(*args, **kwargs):
                    yield chunk

    return EndpointChatModel

"""Chat models: the offline deterministic model (default) or any OpenAI-compatible endpoint."""

from __future__ import annotations

import re

from langchain_core.language_models import BaseChatModel

from tools.settings import Settings

OFFLINE_NAMES = ("offline", "offline-deterministic")


class ModelConfigError(ValueError):
    """The configured model cannot be used (one line, with what to set)."""


def chat_model(settings: Settings, name: str | None = None) -> BaseChatModel:
    """The chat model for ``name`` (default ``settings.model``): offline, or OpenAI-compatible."""
    name = (name or settings.model).strip()
    if name in OFFLINE_NAMES:
        from agent.offline.model import OfflineDeterministicModel

        return OfflineDeterministicModel(thresholds=settings.thresholds, churn_weights=settings.churn_weights)
    if not re.fullmatch(r"[\w.:/@+-]{1,200}", name):
        raise ModelConfigError(f"{name!r} is not a model name")
    import os

    from langchain_openai import ChatOpenAI

    if not os.environ.get("OPENAI_API_KEY"):
        raise ModelConfigError(f"model {name!r} needs OPENAI_API_KEY (and OPENAI_BASE_URL for a local or "
                               "non-OpenAI endpoint); or use CUSTCTX_MODEL=offline")
    return ChatOpenAI(model=name, temperature=0, timeout=settings.model_timeout_s, max_retries=1)

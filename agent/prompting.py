"""Prompts from ``prompts/`` and the ``<customer_context>`` block a model is shown.

A prompt is a file with named ``{placeholders}``; ``render`` fills exactly the names it
is given, so JSON braces inside values are safe. ``context_block`` renders the slices a
step fetched as JSON, with every free-text field written by customers or third parties
(ticket bodies, emails, chat, call moments, titles, headlines) wrapped in
``<untrusted>…</untrusted>``; text that tries to close that tag is defused.
``parse_context_block`` reads the block back (the offline model uses it: it sees exactly
what a real model sees).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from agent.injection import UNTRUSTED_NOTE
from tools.access.policy import hide_masks, show_masks
from tools.slices import Slice, SourceGap, parse_slice

__all__ = ["UNTRUSTED_NOTE", "context_block", "load_prompt", "parse_context_block", "render", "section"]


# slice → list fields holding objects → their untrusted text fields
UNTRUSTED_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "support.tickets": ("tickets", ("subject", "body")),
    "email.threads": ("threads", ("subject", "last_message", "open_questions", "commitments")),
    "chat.mentions": ("mentions", ("text",)),
    "calls.highlights": ("calls", ("title", "moments")),
    "docs.documents": ("documents", ("title",)),
    "research.news": ("articles", ("headline",)),
    "calendar.meetings": ("meetings", ("title",)),
    "crm.activities": ("activities", ("summary",)),
}
_TAG = re.compile(r"</?\s*untrusted[^>]*>", re.IGNORECASE)


@cache
def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.md``."""
    return resources.files("prompts").joinpath(f"{name}.md").read_text(encoding="utf-8")


def render(name: str, **values: Any) -> str:
    """Fill the prompt's ``{placeholders}``; a missing value is an error, not a silent blank."""
    text = load_prompt(name)
    missing = set(re.findall(r"\{([a-z_0-9]+)\}", text)) - set(values)
    if missing:
        raise KeyError(f"prompt {name!r} needs {', '.join(sorted(missing))}")
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def untrusted(text: str | None) -> str | None:
    if text is None:
        return None
    return "<untrusted>" + _TAG.sub("[tag removed]", text) + "</untrusted>"


def _wrap(value: Any) -> Any:
    if isinstance(value, str):
        return untrusted(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    if isinstance(value, dict):  # call key moments: {"kind", "text"}
        return {k: (_wrap(v) if k == "text" else v) for k, v in value.items()}
    return value


def slice_json(s: Slice) -> dict[str, Any]:
    """A slice as the model sees it: data + provenance, untrusted text delimited, values the
    reader's role may not see as the mask marker (they were withheld before this point)."""
    data = show_masks(s.model_dump(mode="json"))
    if s.name in UNTRUSTED_FIELDS:
        list_field, fields = UNTRUSTED_FIELDS[s.name]
        for item in data.get(list_field, []):
            for f in fields:
                if f in item:
                    item[f] = _wrap(item[f])
    return data


# The time windows slices are defined over, told to the model with the slices it sees.
WINDOWS: dict[str, str] = {
    "product.usage": "active users over the last 7 and 30 days; trend = the last 7 days vs the 7 days before",
    "billing.invoices": "the 12 newest invoices; failed charges of the last 90 days",
    "support.tickets": "the 20 newest tickets",
    "support.summary": "repeat issues counted over the last 90 days",
    "crm.opportunities": "open deals and deals closed in the last 12 months",
    "crm.activities": "the 20 newest activities",
    "email.threads": "threads of the last 60 days",
    "calendar.meetings": "meetings within 30 days either side of the as-of date",
    "chat.mentions": "internal mentions of the last 30 days",
    "research.news": "company news of the last 30 days",
}


def context_block(customer: dict[str, Any], slices: dict[str, Slice], gaps: list[SourceGap],
                  traits: dict[str, Any] | None = None, conflicts: list[dict[str, Any]] | None = None) -> str:
    """The JSON inside ``<customer_context>``: who, the fetched slices, the gaps, derived traits
    and conflicts between sources."""
    return json.dumps({
        "customer": customer,
        "slices": {name: slice_json(s) for name, s in slices.items()},
        "gaps": [g.model_dump() for g in gaps],
        "traits": traits or {},
        "conflicts": conflicts or [],
        "windows": {name: WINDOWS[name] for name in slices if name in WINDOWS},
    }, ensure_ascii=False, indent=1)


@dataclass
class ModelContext:
    """A ``<customer_context>`` block read back."""

    customer: dict[str, Any] = field(default_factory=dict)
    slices: dict[str, Slice] = field(default_factory=dict)
    gaps: list[SourceGap] = field(default_factory=list)
    traits: dict[str, Any] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def _unwrap(value: Any) -> Any:
    if isinstance(value, str):
        return value.removeprefix("<untrusted>").removesuffix("</untrusted>")
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def section(text: str, tag: str) -> str | None:
    """The content of the first ``<tag>`` … ``</tag>`` block whose tags stand on their own lines.

    Blocks hold JSON, which escapes newlines inside strings, so untrusted text cannot
    close a block early."""
    m = re.search(rf"^<{tag}>\n(.*?)\n</{tag}>$", text, re.DOTALL | re.MULTILINE)
    return m.group(1) if m else None


def parse_context_block(text: str) -> ModelContext:
    """Read a ``<customer_context>`` block back."""
    data = json.loads(text)
    return ModelContext(
        customer=data.get("customer", {}),
        slices={name: parse_slice(name, hide_masks(_unwrap(v))) for name, v in data.get("slices", {}).items()},
        gaps=[SourceGap(**g) for g in data.get("gaps", [])],
        traits=data.get("traits", {}), conflicts=data.get("conflicts", []))

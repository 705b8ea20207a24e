"""Prompts from ``prompts/`` and the ``<customer_context>`` block a model is shown.

A prompt is a file with named ``{placeholders}``; ``render`` fills exactly the names it
is given, so JSON braces inside values are safe. ``context_block`` renders the slices a
step fetched as JSON (each as ``tools.context.view.model_slice`` shows it to a model: free
text written by customers or third parties delimited and escaped as untrusted), with
``<``/``>`` JSON-escaped so nothing inside can close or open a prompt section.
``parse_context_block`` reads the block back (the offline model uses it: it sees exactly
what a real model sees).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from agent.injection import UNTRUSTED_NOTE
from tools.context.view import model_slice, slice_from_model
from tools.slices import Slice, SourceGap

__all__ = ["UNTRUSTED_NOTE", "context_block", "load_prompt", "parse_context_block", "render", "safe_json",
           "section"]


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    return value if isinstance(value, datetime) else None


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


def safe_json(value: Any) -> str:
    """JSON for a prompt section: ``<``, ``>`` and ``&`` written as ``\\u`` escapes, so text
    inside cannot close the section (``</untrusted_ticket>``) or open another; ``json.loads``
    gives back the exact text."""
    text = json.dumps(value, ensure_ascii=False, indent=1)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def context_block(customer: dict[str, Any], slices: dict[str, Slice], gaps: list[SourceGap],
                  traits: dict[str, Any] | None = None, conflicts: list[dict[str, Any]] | None = None) -> str:
    """The JSON inside ``<customer_context>``: who, the fetched slices, the gaps, derived traits
    and conflicts between sources."""
    return safe_json({
        "customer": customer,
        "slices": {name: model_slice(s) for name, s in slices.items()},
        "gaps": [g.model_dump(exclude_none=True) for g in gaps],
        "traits": traits or {},
        "conflicts": conflicts or [],
    })


@dataclass
class ModelContext:
    """A ``<customer_context>`` block read back."""

    customer: dict[str, Any] = field(default_factory=dict)
    slices: dict[str, Slice] = field(default_factory=dict)
    gaps: list[SourceGap] = field(default_factory=list)
    traits: dict[str, Any] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def section(text: str, tag: str) -> str | None:
    """The content of the first ``<tag>`` … ``</tag>`` block whose tags stand on their own lines.

    Blocks hold JSON, which escapes newlines inside strings, so untrusted text cannot
    close a block early."""
    m = re.search(rf"^<{tag}>\n(.*?)\n</{tag}>$", text, re.DOTALL | re.MULTILINE)
    return m.group(1) if m else None


def parse_context_block(text: str) -> ModelContext:
    """Read a ``<customer_context>`` block back."""
    data = json.loads(text)
    customer = data.get("customer", {})
    as_of = _as_datetime(customer.get("as_of")) or datetime(1970, 1, 1)
    return ModelContext(
        customer=customer,
        slices={name: slice_from_model(name, v, as_of) for name, v in data.get("slices", {}).items()},
        gaps=[SourceGap(**g) for g in data.get("gaps", [])],
        traits=data.get("traits", {}), conflicts=data.get("conflicts", []))

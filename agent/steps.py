"""The fixed steps of the triage and review workflows: which slices each step reads."""

from __future__ import annotations

from tools.slices import SLICE_NAMES

TRIAGE_STEPS: list[tuple[str, list[str]]] = [
    ("who is asking", ["crm.account", "billing.status"]),  # tier (MRR), renewal date, past due
    ("account risk", ["product.usage", "support.summary"]),  # usage trend, CSAT, repeat issues
]
TRIAGE_SLICES: tuple[str, ...] = tuple(dict.fromkeys(s for _, names in TRIAGE_STEPS for s in names))

REVIEW_STEPS: list[tuple[str, list[str]]] = [
    ("relationship snapshot", ["crm.account", "crm.contacts", "billing.status"]),
    ("commercial summary", ["crm.opportunities", "billing.invoices"]),
    ("operations", ["product.usage", "support.summary", "support.tickets"]),
    ("recent activity and sources", ["crm.activities", "email.threads", "calendar.meetings", "chat.mentions",
                                     "docs.documents", "calls.highlights", "research.news"]),
    # left out of the plan when no commerce source is connected (tools.sources.registry.default_slices)
    ("orders and refunds", ["commerce.orders", "commerce.refunds", "commerce.payment_methods",
                            "commerce.addresses"]),
]
assert sorted(s for _, step in REVIEW_STEPS for s in step) == sorted(SLICE_NAMES)

"""The book table: every customer's derived traits, materialised with each refresh.

``tools.traits`` derives tier, health, risk indicators and the churn score from slices;
a view across the whole book ("which enterprise accounts are at risk or renew this
month?") cannot recompute them per customer per question. So every refresh (the worker,
``custctx refresh``, events, webhooks) materialises its customers' traits, chunk by chunk
(``materialise_refreshed``: from the slices the chunk just wrote, what it did not write read
from memory — so from the snapshots long-term memory now holds) — every slice
``derive_traits`` needs (account, billing, usage, support, and the relationship signals'
contacts, email, meetings and calls), so health and the churn score are the ones a
customer's context shows — and upserted into two indexed tables of the state database —
``book_traits`` (one row per tenant and customer: tier, health, churn score, renewal date,
owner, segment, status, last touch, and the CRM account the row filter is judged on) and
``book_risk`` (one row per risk: its kind — ``account``, a risk indicator, or
``relationship``, a relationship risk — the slice it came from and the slices a role must
read to see it).

:func:`find_customers` lists the book through a principal's access gate: the row filter
is pushed down where it names a column (``owner``, ``status``) and judged exactly on the
stored CRM account; a field from a slice the role may not read (or masks) is shown as the
mask marker and cannot be filtered on; every listing is audited (one record for the
listing, one per customer shown, in one batch).
"""

from tools.booktable.listing import (
    HEALTH_INPUTS,
    MAX_LIMIT,
    SORTS,
    BookEntry,
    BookListing,
    BookQuery,
    book_json,
    check_query,
    find_customers,
    parse_within,
)
from tools.booktable.table import (
    BOOK_SLICES,
    RELATIONSHIP_INPUTS,
    TOUCH_SLICES,
    TRAIT_SLICES,
    BookQueryError,
    book_engine,
    book_risk,
    book_rows,
    book_size,
    book_traits,
    materialise,
    materialise_slices,
)

__all__ = ["BOOK_SLICES", "HEALTH_INPUTS", "MAX_LIMIT", "RELATIONSHIP_INPUTS", "SORTS", "TOUCH_SLICES", "TRAIT_SLICES", "BookEntry", "BookListing",
           "BookQuery", "BookQueryError", "book_engine", "book_json", "book_risk", "book_size",
           "book_rows", "book_traits", "check_query", "find_customers", "materialise", "materialise_slices",
           "parse_within"]

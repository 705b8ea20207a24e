"""Identity resolution: every known key of every source → one canonical customer.

The index is built from the identity keys each mapping declares (CRM company id,
billing customer id and ``crm_company_id`` link, support organization id, product
group id, contact and billing emails, domains, names; and for people: application
user ids, anonymous ids, support user ids, name + postcode). Which records are one
customer is :mod:`tools.identity_graph`'s rule: records that share an identifying
value are one (full-outer semantics: a customer known to one system only still
resolves); a value shared by several records of one source links none; a person
rides with the one customer their keys point to, or is a customer of their own.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine, RowMapping

from tools.identity_build import (
    ANCHORED_SOURCES,
    UNAVAILABLE,
    build_index,
    create_state,
    customer_id_for,
    ensure_index,
    identity_customer,
    identity_key,
    identity_meta,
    source_fingerprint,
    state,
)
from tools.identity_graph import (
    FREEMAIL,
    name_postcode,
    normalize_email,
    normalize_name,
)
from tools.settings import Settings
from tools.sources.base import CustomerRef, is_email
from tools.sources.registry import engine_for

ID_KINDS = {"crm": "crm_id", "billing": "billing_id", "support": "support_id", "product": "product_id",
            "commerce": "commerce_id"}
#: Explicit reference prefixes of people's keys (``user:<app user id>``, ...) → key kind.
PERSON_PREFIXES = {"user": "user_id", "anon": "anonymous_id", "support_user": "support_user_id",
                   "zendesk_user": "support_user_id"}
#: Key kinds a bare reference (no prefix) is looked up as, besides the record ids.
BARE_KINDS = ("user_id", "anonymous_id")
NAME_POSTCODE = "name+postcode:"
__all__ = ["ANCHORED_SOURCES", "UNAVAILABLE", "build_index", "create_state", "customer_id_for", "ensure_index",
           "identity_customer", "identity_key", "identity_meta", "is_email", "source_fingerprint", "state",
           # re-exported: the index (tools.identity_build), is_email, and tools.identity_graph's names
           "FREEMAIL", "normalize_email", "normalize_name"]
_DOMAIN = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)/?$", re.IGNORECASE)
MAX_REFERENCE_LENGTH = 320
"""Longest customer reference accepted (characters, after trimming): an email address has at
most 254, a domain 253, an id or a company name far fewer. Longer ones are refused before
any query (a name search with a huge LIKE pattern fails inside SQLite)."""
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


# ------------------------------------------------------------------- errors
class ReferenceError_(ValueError):
    """Base of lookup failures; the message is one line meant for a person."""


class BadReference(ReferenceError_):
    """The reference is malformed (e.g. an invalid email address)."""


class CustomerNotFound(ReferenceError_):
    def __init__(self, query: str, suggestions: list[str]):
        self.query, self.suggestions = query, suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"No customer matches {query!r}.{hint}")


@dataclass(frozen=True)
class Candidate:
    customer_id: str
    name: str
    domain: str | None
    matched_by: str


class AmbiguousCustomer(ReferenceError_):
    def __init__(self, query: str, candidates: list[Candidate]):
        self.query, self.candidates = query, candidates
        names = "; ".join(f"{c.name} ({c.domain or c.customer_id})" for c in candidates)
        super().__init__(f"{query!r} matches {len(candidates)} customers: {names}. Use a domain, email or id.")


def check_reference(text: str, what: str = "a customer reference") -> str:
    """``text`` trimmed, if it can be a reference; else a one-line :class:`BadReference` (too
    long, or not text: NUL characters or invalid UTF-8 a database cannot take).

    Raises:
        BadReference: the message names the limit, never echoes a huge value.
    """
    q = text.strip()
    if len(q) > MAX_REFERENCE_LENGTH:
        raise BadReference(f"{what} has {len(q):,} characters; at most {MAX_REFERENCE_LENGTH} are accepted "
                           "(give an email, a domain, an id or a name)")
    if _NOT_TEXT.search(q):
        raise BadReference(f"{what} holds a NUL character or invalid UTF-8: {q[:40]!r}")
    return q

# ---------------------------------------------------------------- resolving
class IdentityIndex:
    """Lookups against a built index."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def for_settings(cls, settings: Settings) -> IdentityIndex:
        return cls(engine_for(settings.state_db_url))

    def get(self, customer_id: str) -> CustomerRef | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(identity_customer).where(identity_customer.c.customer_id == customer_id)).first()
        return _ref(row._mapping) if row else None

    def _by_key(self, pairs: Iterable[tuple[str, str]]) -> list[str]:
        conds = [(identity_key.c.kind == k) & (identity_key.c.value == v) for k, v in pairs]
        if not conds:
            return []
        with self.engine.connect() as conn:
            return sorted({r[0] for r in conn.execute(select(identity_key.c.customer_id).where(or_(*conds)))})

    def _candidates(self, ids: list[str], matched_by: str) -> list[Candidate]:
        refs = [self.get(i) for i in ids]
        return [Candidate(r.customer_id, r.name, r.primary_domain, matched_by) for r in refs if r]

    def _one(self, query: str, ids: list[str], matched_by: str) -> tuple[CustomerRef, str] | None:
        if not ids:
            return None
        if len(ids) > 1:
            raise AmbiguousCustomer(query, self._candidates(ids, matched_by))
        ref = self.get(ids[0])
        return (ref, matched_by) if ref else None

    def resolve(self, query: str) -> tuple[CustomerRef, str]:
        """Resolve an email, id (``crm:1001`` or bare), domain or name; or a person by
        ``user:<app user id>``, ``anon:<anonymous id>``, ``support_user:<id>`` (``zendesk_user:``)
        or ``name+postcode:<name>, <postcode>``.

        Returns the customer and what matched (``email``, ``domain``, ``crm_id``, ``user_id``, ``name``, ...).
        Raises BadReference, AmbiguousCustomer or CustomerNotFound with a one-line message.
        """
        q = check_reference(query)
        if not q:
            raise BadReference("Give a customer: an email, a domain, an id or a name.")
        if q.lower().startswith(NAME_POSTCODE):
            return self._resolve_name_postcode(q)
        source, sep, rid = q.partition(":")
        kind = ID_KINDS.get(source.lower()) or PERSON_PREFIXES.get(source.lower())
        if sep and kind:
            if not rid.strip():
                raise BadReference(f"{q!r} names no id after {source.lower()}:.")
            found = self._one(q, self._by_key([(kind, rid.strip())]), kind)
            if found:
                return found
            raise CustomerNotFound(q, [])
        if "@" in q:
            return self._resolve_email(q)
        if re.fullmatch(r"c_[0-9a-f]{12}", q) and (ref := self.get(q)):
            return ref, "customer_id"
        found = self._one(q, self._by_key((kind, q) for kind in (*ID_KINDS.values(), *BARE_KINDS)), "id")
        if found:
            return found
        if (m := _DOMAIN.match(q)) and " " not in q:
            found = self._one(q, self._by_key([("domain", m.group(1).lower())]), "domain")
            if found:
                return found
        return self._resolve_name(q)

    def _resolve_email(self, q: str) -> tuple[CustomerRef, str]:
        if not is_email(q):
            raise BadReference(f"{q!r} is not a valid email address.")
        email = q.lower()
        found = self._one(q, self._by_key([("email", email), ("email", normalize_email(email))]), "email")
        if found:
            return found
        domain = email.rsplit("@", 1)[1]
        if domain not in FREEMAIL:
            found = self._one(q, self._by_key([("domain", domain)]), "email domain")
            if found:
                return found
        raise CustomerNotFound(q, [])

    def _resolve_name_postcode(self, q: str) -> tuple[CustomerRef, str]:
        name, sep, postcode = q[len(NAME_POSTCODE):].rpartition(",")
        value = name_postcode(name, postcode) if sep else ""
        if not value:
            raise BadReference(f"{q!r}: write a person as name+postcode:<name>, <postcode>.")
        found = self._one(q, self._by_key([("name_postcode", value)]), "name+postcode")
        if found:
            return found
        raise CustomerNotFound(q, [])

    def _resolve_name(self, q: str) -> tuple[CustomerRef, str]:
        norm = normalize_name(q)
        if not norm:
            raise BadReference(f"{q!r} is not a customer reference.")
        found = self._one(q, self._by_key([("name", norm)]), "name")
        if found:
            return found
        c = identity_key.c
        with self.engine.connect() as conn:
            ids = sorted({r[0] for r in conn.execute(
                select(c.customer_id).where(c.kind == "name", or_(c.value.like(f"{norm} %"), c.value.like(f"% {norm} %"),
                                                                  c.value.like(f"% {norm}")))
                .limit(25))})
        found = self._one(q, ids, "name")
        if found:
            return found
        raise CustomerNotFound(q, self.closest_names(norm))

    def closest_names(self, norm: str, n: int = 3) -> list[str]:
        c = identity_customer.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.name, c.name_norm).where(c.name_norm.like(f"{norm[:1]}%"))).all()
        by_norm = {r.name_norm: r.name for r in rows}
        return [by_norm[m] for m in difflib.get_close_matches(norm, list(by_norm), n=n, cutoff=0.5)]


def _ref(row: RowMapping) -> CustomerRef:
    return CustomerRef(
        customer_id=row["customer_id"], name=row["name"], anchors=json.loads(row["anchors"]),
        domains=tuple(json.loads(row["domains"])), emails=tuple(json.loads(row["emails"])),
        person_ids={k: tuple(v) for k, v in json.loads(row.get("persons") or "{}").items()},
    )

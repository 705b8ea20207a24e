"""The access gate: the policy applied to one principal's reads, each read audited.

``Access`` decides, masks and records; it reads nothing. The read path
(``tools.context.read``) asks it whether a slice may be read (else a ``forbidden`` gap,
without touching the source or memory), has it mask the fields the role may not see on
whatever comes back (from the source, fresh memory, a stale snapshot), has it judge the
row filter on the customer's CRM account (once per request: the verdict is kept), and
it appends one audit record per read. A customer the row filter hides is reported
exactly like one that does not exist (docs/ACCESS.md explains why).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from tools.access.audit import AuditLog, Decision, audit_log_for, audit_row
from tools.access.policy import RolePolicy, load_policy, mask_slice
from tools.access.principal import Principal
from tools.settings import Settings
from tools.slices import SLICE_MODELS, CrmAccount, Slice, SourceGap
from tools.sources.base import utcnow

FORBIDDEN_TEMPLATE = "The {role} role may not read {slice} (access policy)."
HIDDEN_TEMPLATE = "{source} has no record of this customer."


class Access:
    """One principal's access gate: decisions, masking and audit records for every read."""

    def __init__(self, principal: Principal, role: RolePolicy, audit: AuditLog | None = None,
                 clock: Callable[[], datetime] = utcnow):
        if principal.role != role.name:
            raise ValueError(f"principal role {principal.role!r} does not match the policy role {role.name!r}")
        self.principal, self.role, self.audit, self.clock = principal, role, audit, clock
        self._verdicts: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []  # the batch's records (``audit_row``s)
        self._batch_at: datetime | None = None  # the batch's one clock reading
        self._batches = 0

    @classmethod
    def for_principal(cls, settings: Settings, principal: Principal) -> Access:
        """The gate of ``principal`` under the configured policy, auditing into the audit database.

        Raises:
            UnknownRole: the policy does not define the principal's role.
            PolicyError: the policy file cannot be read or is invalid.
        """
        policy = load_policy(str(settings.policy) if settings.policy else None)
        return cls(principal, policy.role(principal.role), audit_log_for(settings))

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    @property
    def filters_rows(self) -> bool:
        return self.role.rows is not None

    def allows(self, slice_name: str) -> bool:
        return self.role.allows(slice_name)

    # ------------------------------------------------------------ decisions
    def forbidden(self, customer_id: str, slice_name: str) -> SourceGap:
        """A slice the role may not read: a ``forbidden`` gap (recorded as denied)."""
        self.record(customer_id, slice_name, "denied", "forbidden", 0.0)
        return SourceGap(slice=slice_name, source=SLICE_MODELS[slice_name].source, kind="forbidden",
                         message=FORBIDDEN_TEMPLATE.format(role=self.role.name, slice=slice_name))

    def hidden(self, customer_id: str, slice_name: str) -> SourceGap:
        """A slice of a customer the row filter hides: looks exactly like a missing record."""
        self.record(customer_id, slice_name, "denied", "row_filter", 0.0)
        source = SLICE_MODELS[slice_name].source
        return SourceGap(slice=slice_name, source=source, kind="not_found",
                         message=HIDDEN_TEMPLATE.format(source=source))

    def admit(self, customer_id: str, result: Slice | SourceGap, latency_ms: float,
              detail: str | None = None) -> Slice | SourceGap:
        """What a read returned, as the role may see it (masked), recorded."""
        if isinstance(result, SourceGap):
            self.record(customer_id, result.slice, "allowed", result.kind, latency_ms, detail)
            return result
        shown = mask_slice(result, self.role.mask.get(result.name, ()), self.role.name)
        p = shown.provenance
        masked = p.masked_fields
        notes = [x for x in (detail, f"masked: {', '.join(masked)}" if masked else None) if x]
        self.record(customer_id, result.name, "masked" if masked else "allowed",
                    "stale" if p.stale else p.served_from, latency_ms, "; ".join(notes) or None)
        return shown

    def judge(self, customer_id: str, account: Slice | SourceGap, latency_ms: float) -> bool:
        """The row filter on a customer's CRM account (or its gap); recorded and remembered.

        No CRM record, or no CRM connected at all, is judged by ``without_crm_record``; a CRM
        that fails (unavailable, timeout, no snapshot to fall back on) fails closed."""
        outcome: str
        if isinstance(account, CrmAccount):
            ok, why = self.role.sees(account, self.principal.user, self.tenant)
            outcome = "stale" if account.provenance.stale else account.provenance.served_from
        elif isinstance(account, SourceGap) and account.kind in ("not_found", "not_connected"):
            ok, why = self.role.sees(None, self.principal.user, self.tenant)
            outcome = account.kind
        else:
            kind = account.kind if isinstance(account, SourceGap) else type(account).__name__
            ok, why, outcome = False, f"CRM account unreadable ({kind}): denied", kind
        self.record(customer_id, "crm.account", "allowed" if ok else "denied", outcome, latency_ms,
                    f"row check: {why}")
        with self._lock:
            self._verdicts[customer_id] = ok
        return ok

    def verdict(self, customer_id: str) -> bool | None:
        """The row filter's verdict on a customer already judged by this gate (None: not yet)."""
        if not self.filters_rows:
            return True
        with self._lock:
            return self._verdicts.get(customer_id)

    # ---------------------------------------------------------------- audit
    def record(self, customer_id: str, slice_name: str, decision: Decision, outcome: str, latency_ms: float,
               detail: str | None = None) -> None:
        """Append one audit record (inside :meth:`batch`: when the outermost batch ends; the records
        of a batch — one request — carry one time, the clock read at its first record)."""
        if self.audit is None:
            return
        p = self.principal
        with self._lock:
            if self._batches:
                if self._batch_at is None:
                    self._batch_at = self.clock()
                self._pending.append(audit_row(self._batch_at, p.tenant, p.user, p.role, p.scope, p.interface,
                                               customer_id, slice_name, decision, outcome, round(latency_ms, 2),
                                               detail))
                return
        self.audit.append_rows([audit_row(self.clock(), p.tenant, p.user, p.role, p.scope, p.interface, customer_id,
                                          slice_name, decision, outcome, round(latency_ms, 2), detail)])

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Records made meanwhile (by any thread) are appended in one transaction at the end —
        before the reads are handed to the caller; a failing append raises."""
        with self._lock:
            self._batches += 1
        try:
            yield
        finally:
            with self._lock:
                self._batches -= 1
                done, self._pending = (self._pending, []) if not self._batches else ([], self._pending)
                if not self._batches:
                    self._batch_at = None
            if done and self.audit is not None:
                self.audit.append_rows(done)

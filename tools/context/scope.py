"""The scope of one request's reads, built once per request and passed down.

A :class:`ReadScope` says who reads (the principal's access gate), as of when (the read
clock), from which long-term memory (already the principal's tenant's), through which
guard, and whether fresh snapshots may be served from memory. Every read of customer
context — ``custctx context``, a graph's fetch, a LangChain tool, MCP, HTTP, a refresh —
takes one, instead of threading these as loose parameters. It also remembers the
request's resolutions, so a reference is resolved once per request however many steps
ask for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from tools.access.gate import Access
from tools.access.principal import Principal
from tools.guard import SourceGuard
from tools.identity import IdentityIndex
from tools.memory import ContextMemory
from tools.settings import Settings
from tools.sources.base import CustomerRef, ReadClock

_guards: dict[tuple, SourceGuard] = {}
_guards_lock = threading.Lock()


def default_guard(settings: Settings) -> SourceGuard:
    """The process-wide guard for these guard settings (breakers live as long as the process)."""
    key = tuple(settings.guard.__dict__.items())  # its fields' values (a model_dump per request cost ~60 µs)
    with _guards_lock:
        if key not in _guards:
            _guards[key] = SourceGuard(settings.guard)
        return _guards[key]


@dataclass(frozen=True, kw_only=True)
class ReadScope:
    """Everything one request reads customer context with."""

    settings: Settings
    clock: ReadClock
    guard: SourceGuard
    access: Access | None = None  # None only for the product's own unaudited reads (fixtures, benchmarks)
    memory: ContextMemory | None = None  # the principal's tenant's long-term memory
    index: IdentityIndex | None = None  # needed to resolve references
    prefer_memory: bool = True  # False: read live even when memory holds a fresh snapshot
    resolved: dict[str, tuple[CustomerRef, str]] = field(default_factory=dict, repr=False, compare=False)
    #: what this request's reads share (``tools.context.read``): the readers it built, and the
    #: snapshot its row check read, handed on to the request's first read of that customer's slices
    memo: dict[object, object] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, settings: Settings, clock: ReadClock, *, principal: Principal | None = None,
              access: Access | None = None, memory: ContextMemory | None = None,
              index: IdentityIndex | None = None, guard: SourceGuard | None = None,
              prefer_memory: bool = True) -> ReadScope:
        """A request's scope: the gate of ``principal`` (or the ``access`` given), memory seen
        from the principal's tenant, the process-wide guard unless one is given.

        Raises:
            UnknownRole: the policy does not define the principal's role.
            PolicyError: the policy file cannot be read or is invalid.
        """
        if access is None and principal is not None:
            access = Access.for_principal(settings, principal)
        if memory is not None and access is not None and memory.tenant != access.tenant:
            memory = memory.for_tenant(access.tenant)
        return cls(settings=settings, clock=clock, guard=guard or default_guard(settings), access=access,
                   memory=memory, index=index, prefer_memory=prefer_memory)

    @property
    def principal(self) -> Principal | None:
        return self.access.principal if self.access is not None else None

    def live(self) -> ReadScope:
        """The same request (same gate, same resolutions) reading every slice from its source."""
        return self if not self.prefer_memory else replace(self, prefer_memory=False, resolved=self.resolved,
                                                           memo=self.memo)

    def allows(self, slice_name: str) -> bool:
        return self.access is None or self.access.allows(slice_name)

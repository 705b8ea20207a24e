"""Deterministic ticket triage: category, priority, sentiment, team and SLA, with evidence.

The rubric is the one at the top of ``tools/embedded/triage_tickets.yaml``:

* **category** from the ticket text (ordered phrase rules; the form's ``issue_type`` is
  only a weak hint when no rule matches); **team** follows the category;
* **priority**, first rule that matches, from the requester's context:
  P1 a security incident (any customer), or an enterprise customer that is blocked
  (outage, locked out, billing problem while already past due); P2 a blocking issue
  for an enterprise or mid-market customer, or any ticket from an account that renews
  within ``renewal_soon_days`` and is at risk; P4 a how-to or feature request from a
  self-serve or healthy account; P3 everything else;
* a suspected prompt injection (``agent.injection``) is flagged and never acted upon; the
  category and priority come from what the ticket is about with the flagged passages set
  aside — an enterprise "production down" ticket that also carries an injection is P1 and
  flagged; a ticket that is nothing but an injection (no issue of its own) is security / P3;
* **sentiment** from the text alone (same text, same sentiment).

No randomness, no network, no model. Context that is missing (a source down) never
stops a decision: a rule that needs a missing fact does not fire, the confidence
drops, and the rationale names what was missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from agent.injection import normalize, set_aside, ticket_own, ticket_signals
from agent.results import (
    SLA_HOURS,
    TEAM_FOR,
    Category,
    Evidence,
    Priority,
    Sentiment,
    TriageDecision,
)
from agent.steps import TRIAGE_SLICES
from tools.settings import ChurnWeights, Thresholds
from tools.slices import BillingStatus, CrmAccount, ProductUsage, Slice, SupportSummary
from tools.sources.tickets import TicketInput
from tools.traits import Traits, derive_traits

_LABEL: dict[Category, str] = {
    "billing": "Billing issue", "bug": "Bug", "how_to": "How-to question", "account_access": "Sign-in/access issue",
    "feature_request": "Feature request", "security": "Security issue", "cancellation": "Churn/cancellation risk",
}


# ------------------------------------------------------------------- text rules
def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(alternatives), re.IGNORECASE)


_SECURITY = _rx(
    r"\bsuspicious\s+(?:log\s?-?ins?|sign[\s-]?ins?|logins|activity|access|sessions?)",
    r"\b(?:unauthori[sz]ed|unrecognized)\s+(?:access|log\s?-?ins?|logins|sign[\s-]?ins?|devices?|sessions?)",
    r"\b(?:compromised|hacked|breach(?:ed)?|phishing|malware|ransomware|exfiltrat\w*|data\s+leak)\b",
    r"\b(?:api[\s-]?keys?|tokens?|passwords?|secrets?|credentials?|private\s+keys?)\b[^.]{0,60}?"
    r"\b(?:public|leaked|exposed|pushed|committed|posted|pasted)\b",
    r"\b(?:leaked|exposed|pushed|committed|posted)\b[^.]{0,40}?\b(?:api[\s-]?keys?|tokens?|passwords?|secrets?|credentials?)\b",
    r"\b(?:may|might|could)\s+have\s+(?:downloaded|exported|copied|taken|accessed|stolen)\b",
    r"\b(?:who\s+left|former\s+\w+|ex-\w+)\b[^.]{0,80}?\b(?:still\s+ha[ds]|active\s+session|downloaded|exported)\b",
)
_CANCEL = _rx(
    r"\bcancel(?:l?ing|l?ed)?\s+(?:my\s+|our\s+|the\s+)?(?:subscription|account|plan|contract|membership|service)",
    r"\b(?:not|won'?t|will\s+not|don'?t|do\s+not|may\s+not|might\s+not|unlikely\s+to|whether\s+to)\s+"
    r"(?:to\s+)?(?:renew|continue|stay)\b",
    r"\bnot\s+renewing\b",
    r"\bswitch(?:ing)?\s+(?:to\s+(?:another|a\s+different|a\s+competitor)|providers?|vendors?|tools?|platforms?)\b",
    r"\b(?:evaluating|considering|looking\s+at)\s+(?:other|alternative|competing)\b",
    r"\b(?:close|terminate|end)\s+(?:our|my|the)\s+(?:account|contract|subscription|agreement)\b",
)
_FEATURE = _rx(
    r"\bfeature\s+request\b", r"(?:^|\n)\s*request\s*:", r"\b(?:would|we'?d|i'?d)\s+love\s+(?:a|an|to\s+see|to\s+have)\b",
    r"\bany\s+chance\s+(?:of|for)\b", r"\b(?:is|are)\s+there\s+plans\s+to\b", r"\broadmap\b",
    r"\bit\s+would\s+save\s+us\b", r"\bwish\s*list\b",
)
_FEATURE_SOFT = _rx(
    r"\b(?:could|can|would)\s+you\s+(?:please\s+)?(?:add|build|support|offer)\s+(?:a|an|support|the\s+option)\b",
    r"\bplease\s+add\s+(?:a|an|support)\b", r"\b(?:the\s+)?(?:option|ability)\s+to\b",
    r"\bwould\s+be\s+(?:great|nice|helpful|useful|awesome|fantastic)\b", r"\bin\s+addition\s+to\b",
    r"\bdoes\s+not\s+scale\b",
)
_BILLING = _rx(
    r"\bcard\s+(?:was\s+|has\s+been\s+|got\s+)?(?:declined|rejected|refused|expired)\b", r"\bdeclined\b",
    r"\bpayments?\s+(?:failed|failure|declined|bounced|did\s+not\s+go\s+through|didn'?t\s+go\s+through)\b",
    r"\b(?:charged|billed|invoiced)\s+(?:us\s+)?(?:twice|double|\$?\d|again|more|too\s+much)",
    r"\bovercharg\w*", r"\brefund\w*", r"\bcredit\s+(?:the|a|us|our)\b",
    r"\b(?:invoices?|bills?|charges?)\s+(?:is\s+|are\s+|was\s+|were\s+)?(?:higher|wrong|incorrect|too\s+high|"
    r"more\s+than|different)\b",
    r"\bvat\b|\btva\b", r"\bpo\s+(?:number|#)", r"\btax\s+(?:id|number|exempt\w*)\b", r"\bpast\s+due\b|\boverdue\b|\bunpaid\b",
    r"\bupdate\s+(?:our|my|the)\s+(?:credit\s+)?(?:card|payment|billing)\b", r"\bpurchase\s+order\b",
)
_BILLING_WEAK = _rx(r"\b(?:invoices?|billing|billed|payments?|charged?|subscription|pricing|receipts?|factur\w*|"
                    r"rechnung\w*|downgrade|upgrade|annual\s+plan)\b")
_BUG_WEAK = _rx(r"\b(?:delayed|duplicat\w*|overlap\w*|drops?|dropped|empty|inverted|missing|misaligned|truncated|"
                r"garbled|mismatch\w*|disappear\w*|not\s+show\w*|doesn'?t\s+show)\b")
_ACCESS_WEAK = _rx(r"\b(?:admins?|owner\s+rights|permissions?|grant\w*|revoke\w*|deactivat\w*|new\s+hires?|"
                   r"user\s+accounts?|access\s+to)\b")
_HOW_TO = _rx(
    r"\bhow\s+(?:do|can|should|would|could)\s+(?:i|we|you|one)\b", r"\bhow\s+to\b",
    r"\bwhere\s+(?:do|can|should|could)\s+(?:i|we)\b", r"\bwhere\s+is\s+the\b",
    r"\bis\s+there\s+(?:a|an|any)\s+(?:way|guide|doc\w*|tutorial|option|setting)\b",
    r"\bwhat\s+is\s+the\s+(?:recommended|best|right|easiest|correct)\s+way\b",
    r"\bcomment\s+(?:puis-je|peut-on|faire|\w+er)\b", r"\boù\s+(?:puis-je|peut-on|trouver)\b",
    r"\bc[oó]mo\s+(?:puedo|podemos|se)\b", r"\bwie\s+(?:kann|können)\s+(?:ich|wir|man)\b",
)
_ACCESS = _rx(
    r"\b(?:sso|saml|okta|azure\s+ad|entra|scim|idp|identity\s+provider|mfa|2fa|two[\s-]factor|multi[\s-]factor)\b",
    r"\bprovision\w*", r"\blog\s?-?in\b|\blogins?\b|\blogged\s+(?:in|out)\b|\blog(?:ging)?\s+out\b",
    r"\bsign(?:ing)?[\s-]?(?:in|on)\b", r"\bpassword", r"\blocked\s+out\b", r"\binvit\w*", r"\bauthenticat\w*",
)
_BUG = _rx(
    r"\b(?:bug|errors?|fail\w*|broken|crash\w*|blank|wrong|incorrect|slow|stalled|stuck|hangs?|freez\w*|"
    r"glitch\w*|regression|outage|timed\s+out|times\s+out|stopped)\b",
    r"\bnot\s+(?:working|loading|running|updating|syncing|saving)\b",
    r"\b(?:doesn'?t|does\s+not|didn'?t|did\s+not)\s+(?:work|load|run|save|sync)\b",
    r"\bdown\b", r"\b[45]\d\d\b", r"\bused\s+to\s+(?:be|work)\b", r"\bjumps?\s+back\b", r"\bresets?\s+after\b",
    r"\btakes?\s+(?:\w+\s+){0,4}(?:minutes|seconds|forever)\s+to\s+load\b",
)
_ISSUE_TYPE_HINT: dict[str, Category] = {
    "billing": "billing", "bug": "bug", "problem": "bug", "incident": "bug", "how_to": "how_to",
    "question": "how_to", "account_access": "account_access", "sso": "account_access",
    "login": "account_access", "feature_request": "feature_request", "security": "security",
    "cancellation": "cancellation",
}

# Priority cues: a full outage, everyone (or the only admin) locked out, a blocking breakage.
_OUTAGE = _rx(
    r"\boutage\b", r"\b(?:down|unavailable|unreachable|offline)\s+for\s+(?:all|every\w*|the\s+whole|our\s+whole|"
    r"the\s+entire|our\s+entire)\b",
    r"\bfor\s+(?:everyone|everybody|all\s+(?:of\s+)?(?:our\s+)?users)\b",
    r"\b(?:nobody|no\s+one|none\s+of\s+(?:our|us|the)\s+\w+)\s+(?:can|could|is\s+able\s+to)\s+(?:work|use|access)\b",
    r"\b(?:every|all)\s+(?:api\s+)?(?:calls?|requests?)\s+(?:returns?|fails?|errors?)\b",
)
_LOCKOUT = _rx(
    r"\b(?:nobody|no\s+one|none\s+of\s+(?:our|us|the)\s+\w+)\s+(?:can|could|is\s+able\s+to)\s+(?:sign|log|get)\s?-?in\b",
    r"\b(?:whole|entire|all)\b[^.]{0,40}?\blocked\s+out\b", r"\blocked\s+out\b[^.]{0,40}?\b(?:whole|entire|everyone|all)\b",
    r"\bonly\s+(?:admin|administrator|owner)\b[^.]{0,80}?\b(?:locked\s+out|can'?t|cannot|can\s+no\s+longer)\b",
    r"\b(?:admins?|administrators?)\s+(?:is|are)\s+locked\s+out\b", r"\bnobody\s+can\s+manage\b",
)
_BROKEN = _rx(
    r"\b(?:fail\w*|broken|crash\w*|blank|stalled|stuck|wrong|incorrect|outage|errors?|timed\s+out|locked\s+out|"
    r"cannot|can'?t|unable\s+to)\b", r"\bdown\b", r"\b[45]\d\d\b",
    r"\bnot\s+(?:working|loading|running|created|provisioned|arriving)\b",
    r"\b(?:doesn'?t|does\s+not|didn'?t|did\s+not)\s+(?:work|run|load|arrive)\b", r"\bstopped\b",
    r"\bnever\s+(?:arrive|received|load|run)\w*", r"\bno\s+longer\s+(?:created|work\w*|run\w*|sync\w*|load\w*)",
)
_IMPACT = _rx(r"\bdepend\w*\s+on\b", r"\brel(?:y|ies|ying)\s+on\b", r"\bneed\s+(?:this|them|it)\b",
              r"\bblock(?:ed|ing)\b", r"\bproduction\b", r"\bmonth[\s-]end\b", r"\burgent\w*|\basap\b")
_MINOR = _rx(r"\b(?:minor|cosmetic|typo|not\s+urgent|no\s+rush|low\s+priority|workaround)\b")

_NEGATIVE = _rx(
    r"\bfrustrat\w*|\bannoy\w*|\bunacceptable\b|\bdisappoint\w*|\bworr(?:y|ied)\b|\bhassle\b",
    r"\burgent\w*|\basap\b|\bimmediately\b|\bplease\s+(?:help|investigate|correct|fix)\b",
    r"\b(?:errors?|fail\w*|problems?|issues?|billed|charged|down|broken|wrong|happen\w*)\b[^.!?]{0,20}\bagain\b",
    r"\b(?:fail(?:ed|ing|s)?|broken|blank|stalled|stuck|wrong|outage|blind|stopped|suspicious|leak\w*|"
    r"compromis\w*|losing|lost|dropped|never)\b",
    r"\b(?:nobody|no\s+one|none\s+of)\b", r"\b(?:can'?t|cannot|unable\s+to|can\s+no\s+longer)\b",
    r"\blocked\s+out\b", r"\bdown\b", r"\bused\s+to\s+be\b", r"\bslow\w*",
    r"\b(?:did\s+not|didn'?t)\s+(?:run|work|arrive)\b", r"\bmay\s+have\s+\w+ed\b",
    r"\b(?:will\s+not|won'?t|may\s+not|might\s+not)\s+(?:renew|continue)\b",
)
_POSITIVE = _rx(
    r"(?<!would\s)\blov(?:e|ing)\b", r"\bfantastic\b", r"\bawesome\b", r"\bamazing\b", r"\bexcellent\b",
    r"\bgreat\s+(?:tool|product|job|work|support|app)\b", r"\bthank(?:s|\s+you)\s+for\s+(?:a|the|your)\s+great\b",
    r"\b(?:really\s+)?(?:happy|delighted|impressed)\s+with\b",
)


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    """The matched words, on one line and at most ~40 characters (cut at a word boundary)."""
    m = pattern.search(text)
    if not m:
        return None
    cue = " ".join(m.group(0).split())
    return cue if len(cue) <= 40 else cue[:40].rsplit(" ", 1)[0] + "…"


def classify(ticket: TicketInput) -> tuple[Category, str, float]:
    """Category from the ticket text, the cue it rests on, and how sure the text rule is (0..1)."""
    return _classify(normalize(ticket.text), ticket.issue_type)


def _classify(text: str, issue_type: str | None) -> tuple[Category, str, float]:
    problem = _BUG.search(text) is not None
    ordered: list[tuple[Category, re.Pattern[str], bool]] = [
        ("security", _SECURITY, True), ("cancellation", _CANCEL, True), ("feature_request", _FEATURE, True),
        ("billing", _BILLING, True), ("how_to", _HOW_TO, not problem), ("account_access", _ACCESS, True),
        ("bug", _BUG, True), ("feature_request", _FEATURE_SOFT, True), ("how_to", _HOW_TO, True),
    ]
    for category, pattern, applies in ordered:
        if applies and (cue := _first(pattern, text)):
            return category, f"'{cue}'", 0.9
    weak: list[tuple[Category, re.Pattern[str]]] = [
        ("billing", _BILLING_WEAK), ("bug", _BUG_WEAK), ("account_access", _ACCESS_WEAK)]
    for category, pattern in weak:
        if cue := _first(pattern, text):
            return category, f"'{cue}'", 0.7
    hint = _ISSUE_TYPE_HINT.get((issue_type or "").strip().lower())
    if hint:
        return hint, f"form issue type {issue_type}", 0.6
    return "how_to", "no specific cue", 0.35


def sentiment_of(text: str) -> Sentiment:
    """Negative, neutral or positive from the text alone: the same text always gets the same answer."""
    t = normalize(text)
    # a security incident is worrying however calmly it is told
    neg = sum(1 for _ in _NEGATIVE.finditer(t)) + (1 if _SECURITY.search(t) else 0)
    pos = sum(1 for _ in _POSITIVE.finditer(t))
    if neg > pos:
        return "negative"
    return "positive" if pos > neg else "neutral"


# ------------------------------------------------------------------- context facts
class _Context:
    """The facts of the triage slices that the priority rules read; None when unknown."""

    def __init__(self, slices: Mapping[str, Slice], traits: Traits, as_of: datetime, t: Thresholds):
        acc, bil = slices.get("crm.account"), slices.get("billing.status")
        use, sup = slices.get("product.usage"), slices.get("support.summary")
        self.account = acc if isinstance(acc, CrmAccount) else None
        self.billing = bil if isinstance(bil, BillingStatus) else None
        self.usage = use if isinstance(use, ProductUsage) else None
        self.support = sup if isinstance(sup, SupportSummary) else None
        self.traits, self.t = traits, t
        self.missing = [s for s in TRIAGE_SLICES if s not in slices]
        self.stale = [n for n, s in slices.items() if n in TRIAGE_SLICES and s.provenance.stale]
        self.days_to_renewal: int | None = None
        if self.account is not None and self.account.status != "churned":
            if self.account.renewal_date is not None:
                self.days_to_renewal = (self.account.renewal_date - as_of.date()).days
            else:
                self.days_to_renewal = self.account.days_to_renewal

    @property
    def tier(self) -> str | None:
        return self.traits.tier

    @property
    def mrr(self) -> str:
        return f"MRR {self.traits.mrr:,.0f}" if self.traits.mrr is not None else "MRR unknown"

    @property
    def past_due(self) -> bool:
        if self.billing is not None:
            return self.billing.status == "past_due"
        return "billing_issue" in self.traits.risk_indicators

    @property
    def billing_canceled(self) -> bool:
        return self.billing is not None and self.billing.status == "canceled"

    @property
    def declining(self) -> bool:
        if self.usage is not None:
            return self.usage.trend == "declining"
        return "declining_usage" in self.traits.risk_indicators

    def risks(self, churn_talk: bool) -> list[str]:
        """Why the account is at risk (reasons from the traits), plus talk of leaving in the ticket."""
        reasons = {r.name: r.reason for r in self.traits.risk_reasons}
        names = dict.fromkeys([*self.traits.risk_indicators, *reasons])
        out = [f"{n.replace('_', ' ')} ({reasons[n]})" if n in reasons else n.replace("_", " ")
               for n in names if n not in ("healthy", "renewal_soon")]
        return out + (["the ticket talks of leaving"] if churn_talk else [])

    def healthy(self) -> tuple[bool, str]:
        """Healthy and low-risk (billing current, usage not declining, no renewal at risk), and why."""
        facts = ["billing status unknown" if self.billing is None else f"subscription {self.billing.status}",
                 "usage unknown" if self.usage is None else f"usage {self.usage.trend}"]
        ok = self.billing is not None and self.billing.status not in ("past_due", "canceled") \
            and self.usage is not None and self.usage.trend != "declining"
        if self.days_to_renewal is not None:
            facts.append(f"renewal in {self.days_to_renewal} days")
        return ok, ", ".join(facts)

    def renews_soon(self) -> bool:
        return self.days_to_renewal is not None and 0 <= self.days_to_renewal <= self.t.renewal_soon_days


def _evidence(ctx: _Context) -> list[Evidence]:
    out: list[Evidence] = []
    if (a := ctx.account) is not None:
        parts = [a.company_name, f"MRR {a.mrr:,.2f}" if a.mrr is not None else None,
                 f"plan {a.plan}" if a.plan else None, f"status {a.status}" if a.status else None,
                 f"renewal {a.renewal_date} ({ctx.days_to_renewal} days away)" if a.renewal_date else None]
        out.append(Evidence(slice="crm.account", fact=", ".join(p for p in parts if p),
                            record_ids=a.provenance.record_ids))
    if (b := ctx.billing) is not None:
        parts = [f"subscription {b.status}", f"balance due {b.balance_due:,.2f}" if b.balance_due else None,
                 f"last payment {b.last_payment_date}" if b.last_payment_date else None,
                 f"MRR {b.mrr:,.2f}" if b.mrr is not None and ctx.traits.tier_source == "billing.status" else None]
        out.append(Evidence(slice="billing.status", fact=", ".join(p for p in parts if p),
                            record_ids=b.provenance.record_ids))
    if (u := ctx.usage) is not None:
        days = u.days_since_login
        login = "" if days is None else f", last login {days} day{'' if days == 1 else 's'} ago"
        out.append(Evidence(slice="product.usage", record_ids=u.provenance.record_ids,
                            fact=f"usage {u.trend}, {u.active_users_30d} active users in 30 days{login}"))
    if (s := ctx.support) is not None:
        parts = [f"{s.open_tickets} open of {s.total_tickets} tickets", f"CSAT {s.csat}" if s.csat is not None else None,
                 f"{s.repeat_issue_count} repeat {s.repeat_issue_type} tickets" if s.repeat_issue_count else None]
        out.append(Evidence(slice="support.summary", fact=", ".join(p for p in parts if p),
                            record_ids=s.provenance.record_ids))
    return out


# ----------------------------------------------------------------------- priority
def _priority(category: Category, text: str, incident: bool, ctx: _Context) -> tuple[Priority, str]:
    """The rubric's first matching rule, and the reason in words (read after "because")."""
    if category == "security" and incident:
        return "P1", "a security incident is P1 for any customer"
    tier, mrr = ctx.tier, ctx.mrr
    outage, lockout = _OUTAGE.search(text), _LOCKOUT.search(text)
    if tier == "enterprise":
        if category == "billing" and ctx.past_due:
            return "P1", f"an enterprise account ({mrr}) is already past due"
        if category in ("bug", "account_access") and outage:
            return "P1", f"there is a full outage ('{_words(outage)}') at an enterprise account ({mrr})"
        if category in ("bug", "account_access") and lockout:
            return "P1", f"an enterprise account ({mrr}) is locked out ('{_words(lockout)}')"
    blocking = _blocking(category, text, ctx)
    if tier in ("enterprise", "mid_market") and blocking:
        who = "an enterprise" if tier == "enterprise" else "a mid-market"
        return "P2", f"it is {blocking} for {who} account ({mrr})"
    risks = ctx.risks(category == "cancellation")
    if ctx.renews_soon() and risks:
        return "P2", f"the account renews in {ctx.days_to_renewal} days and is at risk: {'; '.join(risks[:3])}"
    if category in ("how_to", "feature_request"):
        if tier == "self_serve":
            return "P4", f"it comes from a self-serve account ({mrr})"
        healthy, why = ctx.healthy()
        return ("P4", f"it comes from a healthy account ({why})") if healthy else \
            ("P3", f"the account could not be confirmed healthy ({why}), so not P4")
    if category == "security":
        return "P3", "it is a security question, not a confirmed incident"
    if tier is None:
        return "P3", "the account's tier is unknown (no CRM or billing MRR), so no P1/P2 rule applies"
    if tier == "self_serve" and (blocking or outage or lockout or ctx.past_due):
        return "P3", f"it comes from a self-serve account ({mrr}); the blocked-account rules are for larger accounts"
    if category == "billing":
        if ctx.billing is None:
            return "P3", f"the billing status is unknown, so the past-due rules could not be checked ({mrr})"
        return "P3", f"nothing is blocked: the subscription is {ctx.billing.status} ({mrr})"
    return "P3", f"nothing in the ticket or the context marks this {tier.replace('_', '-')} account ({mrr}) " \
        "as blocked or at risk"


def _words(m: re.Match[str]) -> str:
    return " ".join(m.group(0).split())[:60]


def _blocking(category: Category, text: str, ctx: _Context) -> str | None:
    if category == "billing":
        return "a billing problem while already past due" if ctx.past_due else None
    cue = _IMPACT.search(text) or _BROKEN.search(text)
    if category in ("bug", "account_access") and cue and not _MINOR.search(text):
        return f"a blocking issue ('{_words(cue)}')"
    return None


# ------------------------------------------------------------------------ decide
def decide(ticket: TicketInput, slices: Mapping[str, Slice], traits: Traits, as_of: datetime,
           thresholds: Thresholds) -> TriageDecision:
    """Triage one ticket with the rubric, from its text and the requester's context.

    Args:
        ticket: The ticket; its subject and description are untrusted text, read as data only.
        slices: The triage slices that could be fetched (a missing one is reported, not fatal).
        traits: Derived traits of the customer (tier, risk indicators); derived from the slices
            when empty.
        as_of: The clock for day counts (renewal in N days).
        thresholds: Tier, renewal-window and risk thresholds.

    Returns:
        The decision, with evidence drawn only from ``slices`` and a short grounded rationale.
    """
    if as_of.tzinfo is not None:
        as_of = as_of.astimezone(UTC).replace(tzinfo=None)
    if not traits.based_on and slices:
        traits = derive_traits(dict(slices), thresholds, ChurnWeights())
    ctx = _Context(slices, traits, as_of, thresholds)
    signals = ticket_signals(ticket)
    # what the ticket is about, with the injected passages set aside: they neither raise nor lower it
    text = set_aside(ticket.text, ticket_own(ticket)) if signals else normalize(ticket.text)
    category, cue, confidence = _classify(text, None if signals else ticket.issue_type)
    priority: Priority
    if signals and confidence < 0.9:  # no issue of its own besides the injection
        category, priority, confidence = "security", "P3", 0.9
        summary = (f"Suspected prompt injection ({', '.join(signals)}): the text asks the assistant to act "
                   "rather than describing a problem; routed to security at P3 for review and not acted upon.")
    else:
        incident = category == "security" and _SECURITY.search(text) is not None
        priority, reason = _priority(category, text, incident, ctx)
        summary = f"{_LABEL[category]} ({cue}): {priority} because {reason}."
        if signals:
            summary += (f" The ticket also carries a suspected prompt injection ({', '.join(signals)}): that "
                        "text was set aside for this decision and not acted upon.")
    hint = _ISSUE_TYPE_HINT.get((ticket.issue_type or "").strip().lower())
    if hint is not None and not signals:
        confidence += 0.05 if hint == category else -0.05
    confidence -= 0.12 * len(ctx.missing) + 0.05 * len(ctx.stale) + (0.1 if ctx.tier is None else 0.0)
    if ctx.missing:
        summary += f" Missing context: {', '.join(ctx.missing)}; the priority may change once it is available."
    if ctx.stale:
        summary += f" Stale snapshots used: {', '.join(ctx.stale)}."
    return TriageDecision(
        ticket_id=ticket.id, category=category, priority=priority, sentiment=sentiment_of(ticket.text),
        team=TEAM_FOR[category], sla_hours=SLA_HOURS[priority], confidence=round(min(0.98, max(0.1, confidence)), 2),
        suspected_injection=bool(signals), injection_signals=signals, evidence=_evidence(ctx), rationale=summary,
    )

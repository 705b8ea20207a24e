"""CRM source: account, contacts, opportunities and activities (HubSpot, Salesforce, ...)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Connection

from tools.mapping.conversions import days_between
from tools.mapping.schema import (
    ACTIVE_CONTACT_DAYS,
    CLOSED_DEALS_DAYS,
    CONTACT_ROLE_ORDER,
    RECENT_ACTIVITIES,
)
from tools.slices import (
    Activity,
    Contact,
    CrmAccount,
    CrmActivities,
    CrmContacts,
    CrmOpportunities,
    Opportunity,
)
from tools.sources.base import CustomerRef, ReadClock, SliceNotFound, SourceReader


class CrmReader(SourceReader):
    source = "crm"

    def read_account(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CrmAccount:
        crm_id = self.anchor(customer)
        fetched = self.lookup(conn, "account", "id", [crm_id])
        if not fetched.rows:
            raise SliceNotFound(f"CRM account {crm_id} not found")
        r = fetched.rows[0]
        renewal = r.get("renewal_date")
        return CrmAccount(
            provenance=self.provenance(clock, fetched.rows),
            crm_id=r["id"],
            company_name=r["name"],
            domain=r.get("domain"),
            industry=r.get("industry"),
            employees=r.get("employees"),
            segment=r.get("segment"),
            owner=r.get("owner"),
            plan=r.get("plan"),
            mrr=r.get("mrr"),
            contract_value=r.get("contract_value"),
            renewal_date=renewal,
            days_to_renewal=-days_between(renewal, clock.as_of) if renewal else None,
            status=r.get("status"),
            lifecycle_stage=r.get("lifecycle_stage"),
            churn_date=r.get("churn_date"),
            region=r.get("region"),
            country=r.get("country"),
            parent_id=None if r.get("parent_id") is None else str(r["parent_id"]),
            parent_name=r.get("parent_name"),
            custom=self.mapping.entity("account").custom(r),
        )

    def read_contacts(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CrmContacts:
        crm_id = self.anchor(customer)
        fetched = self.lookup(conn, "contact", "account_id", [crm_id])
        entity = self.mapping.entity("contact")
        contacts = []
        for r in fetched.rows:
            days = days_between(r.get("last_activity"), clock.as_of)
            contacts.append(Contact(
                name=" ".join(x for x in (r.get("first_name"), r.get("last_name")) if x)
                or r.get("name") or r.get("email") or "?",
                title=r.get("title"),
                role=r.get("role"),
                email=r.get("email"),
                phone=r.get("phone"),
                last_activity=r.get("last_activity"),
                engagement="unknown" if days is None else ("active" if days <= ACTIVE_CONTACT_DAYS else "cold"),
                custom=entity.custom(r),
            ))
        # Champions and sponsors first, then by most recent activity.
        rank = {role: i for i, role in enumerate(CONTACT_ROLE_ORDER)}
        contacts.sort(key=lambda c: (rank.get(c.role or "", 9), -(c.last_activity.timestamp() if c.last_activity else 0)))
        return CrmContacts(provenance=self.provenance(clock, fetched.rows), contacts=contacts)

    def read_opportunities(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CrmOpportunities:
        crm_id = self.anchor(customer)
        fetched = self.lookup(conn, "opportunity", "account_id", [crm_id], order_by="close_date")
        year_ago = (clock.as_of - timedelta(days=CLOSED_DEALS_DAYS)).date()
        open_, closed, used = [], [], []
        for r in fetched.rows:
            opp = Opportunity(
                name=r["name"], stage=r.get("stage"), amount=r.get("amount"), close_date=r.get("close_date"),
                is_closed=bool(r.get("is_closed")), is_won=r.get("is_won") if r.get("is_closed") else None,
                loss_reason=r.get("loss_reason"), next_step=r.get("next_step"),
            )
            if not opp.is_closed:
                open_.append(opp)
            elif opp.close_date is None or opp.close_date >= year_ago:
                closed.append(opp)
            else:
                continue
            used.append(r)
        return CrmOpportunities(
            provenance=self.provenance(clock, used), open=open_, closed=closed)

    def read_activities(self, conn: Connection, customer: CustomerRef, clock: ReadClock) -> CrmActivities:
        crm_id = self.anchor(customer)
        fetched = self.lookup(conn, "activity", "account_id", [crm_id], window=("date", None, clock.as_of),
                              order_by="date", limit=RECENT_ACTIVITIES)
        acts = [Activity(date=r["date"], kind=r.get("kind") or "activity", summary=r.get("summary"))
                for r in fetched.rows]
        return CrmActivities(provenance=self.provenance(clock, fetched.rows), activities=acts)

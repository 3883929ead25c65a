"""Tenants' quotas across replicas, in the PostgreSQL journal's database (Access.shared).

One token bucket row per tenant (`quota_buckets`: tokens and when they were counted, in
the database's clock) and one row per concurrency slot held (`quota_slots`), leased to
the replica holding it and renewed by the journal's heartbeat. Taking a slot is one
transaction that locks the tenant's bucket row, so replicas taking slots at once are
serialised per tenant and `max_concurrent` holds exactly; slots whose lease lapsed (their
replica died) are deleted first, so they come back within one lease period."""

from __future__ import annotations

from typing import Any

import structlog

from sandbox.access.tenants import Tenant, over_concurrency, over_rate
from sandbox.durable.postgres import PostgresJournal
from sandbox.errors import Unavailable

log = structlog.get_logger("sandbox.durable")


class PostgresQuotas:
    """SharedQuotas over `journal`'s database; slots leased to `owner` (the replica)."""

    def __init__(self, journal: PostgresJournal, *, owner: str) -> None:
        self._journal = journal
        self._owner = owner
        self._held = 0
        journal.renewals.append(self._renew)

    def acquire(self, tenant: str, quota: Tenant, *, token: bool = True) -> int:
        slot = self._take(tenant, quota, slot=True, token=token)
        assert slot is not None
        return slot

    def take_token(self, tenant: str, quota: Tenant) -> None:
        self._take(tenant, quota, slot=False, token=True)

    def _take(self, tenant: str, quota: Tenant, *, slot: bool, token: bool) -> int | None:
        """One transaction: a rate token (if `token`) and a leased slot (if `slot`), both
        or neither; raises Throttled as Access does in one process."""
        lease_s = self._journal.lease_s
        want_slot, want_token = slot, token

        def take(conn: Any) -> tuple[int | None, float, bool]:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO quota_buckets (tenant, tokens, stamp) VALUES (%s, %s, now())"
                    " ON CONFLICT (tenant) DO NOTHING",
                    (tenant, float(quota.burst)),
                )
                tokens, elapsed_s = conn.execute(
                    "SELECT tokens, extract(epoch FROM now() - stamp)::float8"
                    " FROM quota_buckets WHERE tenant = %s FOR UPDATE",
                    (tenant,),
                ).fetchone()
                tokens = min(float(quota.burst), tokens + max(0.0, elapsed_s) * quota.rate_per_s)
                conn.execute(
                    "DELETE FROM quota_slots WHERE tenant = %s AND lease_until < now()", (tenant,)
                )
                (running,) = conn.execute(
                    "SELECT count(*) FROM quota_slots WHERE tenant = %s", (tenant,)
                ).fetchone()
                crowded = want_slot and running >= quota.max_concurrent
                granted = not crowded and (tokens >= 1.0 or not want_token)
                spent = 1.0 if granted and want_token else 0.0
                conn.execute(
                    "UPDATE quota_buckets SET tokens = %s, stamp = now() WHERE tenant = %s",
                    (tokens - spent, tenant),
                )
                if not granted:
                    return None, tokens, crowded
                if not want_slot:
                    return 0, tokens, False
                (slot,) = conn.execute(
                    "INSERT INTO quota_slots (tenant, owner, lease_until)"
                    " VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING id",
                    (tenant, self._owner, lease_s),
                ).fetchone()
                return int(slot), tokens, False

        taken, tokens, crowded = self._journal.call(take)
        if taken is None:
            # Concurrency first, as Access checks in one process.
            raise over_concurrency(tenant, quota) if crowded else over_rate(tenant, quota, tokens)
        if not want_slot:
            return None
        self._held += 1
        return taken

    def release(self, slot: int) -> None:
        self._held = max(0, self._held - 1)
        try:
            self._journal.call(
                lambda conn: conn.execute("DELETE FROM quota_slots WHERE id = %s", (slot,))
            )
        except Unavailable:
            log.warning("a quota slot is left to lapse: the journal is unreachable")

    def _renew(self) -> None:
        if self._held:
            self._journal.call(
                lambda conn: conn.execute(
                    "UPDATE quota_slots SET lease_until = now() + make_interval(secs => %s)"
                    " WHERE owner = %s",
                    (self._journal.lease_s, self._owner),
                )
            )

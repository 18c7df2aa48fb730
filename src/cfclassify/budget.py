"""The neuron ledger: never spend past the day's budget, at any concurrency, across crashes.

Money is counted in integer micro-neurons (one image of resnet-50 = 228,055). A day is a UTC
date, read from an injectable clock at every reservation, so a run that crosses 00:00 UTC goes
on with the new day's budget. The rules (SPEC "Budget"):

- Before a request, its cost is *reserved* in SQLite (durable). The store refuses when
  charged + reserved + cost would pass the day's limit, in one IMMEDIATE transaction, so no
  interleaving of workers or processes can overspend. No reservation, no request.
- A success turns the reservation into a charge in the same transaction as the labels (a
  gateway cache HIT is charged 0). A clear failure (an error answer) releases it. An unclear
  one (the body went out, no answer came back) keeps it as a charge: we may have been billed.
- Reservations left behind by a run that died count as charges (``Store.settle_orphaned_reservations``,
  called by the runner once it holds the run lock).
- A quota error (3036 / 4006) marks the day exhausted: no request from any run until 00:00 UTC.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from .config import BudgetSettings, PricingSettings
from .store import Store

MICRO = 1_000_000


def utc_clock() -> datetime:
    return datetime.now(UTC)


def to_micro(neurons: float) -> int:
    return round(neurons * MICRO)


class Refusal(Enum):
    BUDGET = "budget"  # the day's (or --budget's) neurons are spent
    QUOTA = "quota"  # the service said the daily allocation is used up
    MAX_IMAGES = "max_images"  # --max-images reached for this run


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    day: str
    micro_neurons: int


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: str
    charged: int
    reserved: int
    limit: int
    exhausted: str | None
    resets_at: datetime

    @property
    def left(self) -> int:
        return 0 if self.exhausted else max(0, self.limit - self.charged - self.reserved)

    def as_dict(self) -> dict[str, Any]:
        """Neurons (not micro-neurons) for people and scripts."""
        return {
            "day": self.day,
            "charged_neurons": self.charged / MICRO,
            "reserved_neurons": self.reserved / MICRO,
            "limit_neurons": self.limit / MICRO,
            "left_neurons": self.left / MICRO,
            "exhausted": self.exhausted,
            "resets_at": self.resets_at.isoformat(),
        }


class Ledger:
    """Reserve, charge and release neurons for one run."""

    def __init__(
        self,
        store: Store,
        budget: BudgetSettings,
        pricing: PricingSettings,
        *,
        run_id: int | None = None,
        budget_override: float | None = None,
        max_images: int | None = None,
        clock: Callable[[], datetime] = utc_clock,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.cost = pricing.neurons_per_million_images  # micro-neurons per image
        self.pricing = pricing
        if budget_override is not None:
            self.limit = to_micro(budget_override)
        else:
            self.limit = max(0, to_micro(budget.daily_neurons) - to_micro(budget.reserve_neurons))
        self.max_images = max_images
        self.clock = clock
        self.reserved_this_run = 0
        self.last_refusal: Refusal | None = None

    def today(self) -> str:
        return self.clock().astimezone(UTC).date().isoformat()

    def images_per_day(self) -> int:
        return self.limit // self.cost

    def reserve(self, sha256: str | None = None) -> Reservation | None:
        """Reserve one image's cost today, or None (see ``last_refusal`` for why)."""
        if self.max_images is not None and self.reserved_this_run >= self.max_images:
            self.last_refusal = Refusal.MAX_IMAGES
            return None
        day = self.today()
        if self.store.day_exhausted(day):
            self.last_refusal = Refusal.QUOTA
            return None
        rid = self.store.reserve(day=day, cost=self.cost, limit=self.limit, run_id=self.run_id, sha256=sha256)
        if rid is None:
            self.last_refusal = Refusal.QUOTA if self.store.day_exhausted(day) else Refusal.BUDGET
            return None
        self.reserved_this_run += 1
        return Reservation(rid, day, self.cost)

    def release(self, reservation: Reservation, outcome: str = "error") -> None:
        """A clear failure: the service answered with an error, nothing was billed."""
        self.store.settle(reservation.id, state="released", outcome=outcome)

    def keep(self, reservation: Reservation, outcome: str = "unknown") -> None:
        """An unclear failure: count the reservation as spent."""
        self.store.settle(reservation.id, state="charged", outcome=outcome)

    def charge_for(self, cache_status: str | None) -> int:
        """Micro-neurons a successful answer costs: a gateway cache HIT ran no model."""
        return 0 if cache_status == "HIT" else self.cost

    def mark_exhausted(self, reason: str) -> None:
        self.store.mark_day_exhausted(self.today(), reason)

    def usage(self, day: str | None = None) -> DayUsage:
        day = day or self.today()
        charged, reserved = self.store.day_usage(day)
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        return DayUsage(
            day, charged, reserved, self.limit, self.store.day_exhausted(day), start + timedelta(days=1)
        )

    def usd_for(self, day_micro_neurons: int) -> float:
        """Dollars a day's neurons cost on Workers Paid: only the part above the free allocation."""
        over = max(0.0, day_micro_neurons / MICRO - self.pricing.free_neurons_per_day)
        return over * self.pricing.usd_per_thousand_neurons / 1000

    def days_needed(self, images: int) -> int:
        """Whole UTC days to classify ``images`` at this budget, counting what is left today."""
        if images <= 0:
            return 0
        per_day = self.images_per_day()
        if per_day == 0:
            return -1  # never: the budget cannot pay for one image
        today_left = self.usage().left // self.cost
        if images <= today_left:
            return 1
        rest = images - today_left
        return (1 if today_left else 0) + math.ceil(rest / per_day)

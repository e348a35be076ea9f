"""Which Stripe meter a piece of overage goes to, under a customer's plan terms.

A meter's overage goes to the meter's own Stripe meter, named by its key; a dimensional price's overage with
a priced dimension value goes to that value's ``StripeDimensionMeter`` instead. The outbox drain routes each
row it sends by this, and reconciliation checks every meter this names, so the two never disagree on where
usage went.
"""

from dataclasses import dataclass

from billing_app.models import StripeDimensionMeter
from plans.models import Meter
from plans.terms import PlanTerms


@dataclass(frozen=True)
class StripeMeterRoute:
    """One Stripe meter of a customer: what the drain sends as ``event_name`` and the meter it lands on."""

    event_name: str
    stripe_meter_id: str
    meter_id: int
    dimension_value: str  # "" for the meter's own Stripe meter


class StripeMeterRoutes:
    """The Stripe meters of one plan version's terms. Read the terms afresh: Stripe ids are set by sync."""

    def __init__(self, terms: PlanTerms) -> None:
        self.terms = terms
        self._values = {meter_id: terms.dimension_values(meter_id) for meter_id in terms.prices}
        self._dimension_meters = {
            (found.meter_id, found.value): found
            for found in StripeDimensionMeter.objects.filter(
                meter_id__in=[meter_id for meter_id, values in self._values.items() if values]
            )
            if found.value in self._values[found.meter_id]
        }

    def route(self, *, meter: Meter, dimension_value: str) -> StripeMeterRoute | None:
        """Where overage of ``meter`` with ``dimension_value`` goes; None until sync has made that meter."""
        if dimension_value in self._values.get(meter.pk, ()):
            found = self._dimension_meters.get((meter.pk, dimension_value))
            if found is None or not found.stripe_meter_id:
                return None
            return StripeMeterRoute(found.event_name, found.stripe_meter_id, meter.pk, dimension_value)
        if not meter.stripe_meter_id:
            return None
        return StripeMeterRoute(meter.key, meter.stripe_meter_id, meter.pk, "")

    def all(self) -> set[StripeMeterRoute]:
        """Every Stripe meter the version's prices send to."""
        routes = set()
        for meter_id, price in self.terms.prices.items():
            for value in ("", *sorted(self._values[meter_id])):
                route = self.route(meter=price.meter, dimension_value=value)
                if route is not None:
                    routes.add(route)
        return routes

"""Staff pages beside the admin: the research behind a price change, for one plan version."""

import csv

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from plans.models import PlanVersion
from plans.selectors import prices_with_rates
from usage.selectors.price_changes import migration_preview, usage_percentiles


def price_research(request: HttpRequest, version_id: int) -> HttpResponse:
    """For a (draft) version: each priced meter's usage percentiles beside its included quantity, and every
    subscriber's last three closed periods re-rated under it. ``?format=csv`` downloads the backtest."""
    version = get_object_or_404(PlanVersion.objects.select_related("plan"), pk=version_id)
    preview = migration_preview(version=version)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = (
            f'attachment; filename="{version.plan.code}-v{version.number}-preview.csv"'
        )
        writer = csv.writer(response)
        writer.writerow(["customer", "name", "periods", "old_total", "new_total", "difference", "currency"])
        for row in preview.customers:
            writer.writerow(
                [
                    row.customer,
                    row.name,
                    row.periods,
                    row.old_total,
                    row.new_total,
                    row.difference,
                    version.currency,
                ]
            )
        return response
    meters = [
        {"price": price, "percentiles": usage_percentiles(meter=price.meter)}
        for price in prices_with_rates(version)
    ]
    return render(
        request,
        "admin/usage/price_research.html",
        {"version": version, "meters": meters, "preview": preview, "title": f"Price research: {version}"},
    )

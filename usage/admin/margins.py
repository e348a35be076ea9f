"""The margin report: revenue against serving cost, a staff page beside the admin (routed in
billing_app/urls.py)."""

import csv
from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from core.errors import InvalidInput
from core.money import format_money
from usage.selectors.margins import (
    MarginGroup,
    MarginRow,
    MarginSort,
    margin_group_parse,
    margin_report,
    margin_sort_parse,
    report_period_parse,
)


def margin_report_page(request: HttpRequest) -> HttpResponse:
    """Revenue, serving cost and margin of a period by customer, meter or model, sortable by each column;
    ``?format=csv`` downloads the same rows with exact amounts. Bad parameters answer 400 with the reason."""
    try:
        period = report_period_parse(request.GET.get("period") or None)
        group_by = margin_group_parse(request.GET.get("group_by") or None)
        sort = margin_sort_parse(request.GET.get("o") or None)
    except InvalidInput as error:
        return HttpResponse(error.message, status=400, content_type="text/plain; charset=utf-8")
    report = margin_report(period=period, group_by=group_by, sort=sort)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="margins-{period.label}-{group_by}.csv"'
        writer = csv.writer(response)
        writer.writerow(
            ["key", "label", "currency", "revenue", "cost", "cost_currency", "margin", "margin_percent"]
        )
        for row in [*report.rows, *report.totals]:
            writer.writerow(
                [
                    row.key,
                    row.label,
                    row.currency,
                    _plain(row.revenue),
                    _plain(row.cost),
                    report.cost_currency,
                    _plain(row.margin),
                    _plain(row.margin_percent),
                ]
            )
        return response
    query = {"period": period.label, "group_by": group_by.value}
    columns = [
        {
            "name": field.label,
            "sort": f"-{field.value}" if sort == field.value else field.value,
            "current": sort.removeprefix("-") == field.value,
            "descending": sort.startswith("-"),
        }
        for field in MarginSort
    ]
    return render(
        request,
        "admin/usage/margins.html",
        {
            "title": "Margins",
            "report": report,
            "rows": [_shown(row, report.cost_currency) for row in report.rows],
            "totals": [_shown(row, report.cost_currency) for row in report.totals],
            "columns": columns,
            "query": query,
            "sort": sort,
            "groups": MarginGroup.choices,
            "this_month": timezone.now().strftime("%Y-%m"),
        },
    )


def _plain(value: Decimal | None) -> str:
    return "" if value is None else f"{value.normalize():f}"


def _shown(row: MarginRow, cost_currency: str) -> dict[str, str]:
    """A row as the page shows it: amounts rounded to the currency's minor unit, for reading only."""
    return {
        "key": row.key,
        "label": row.label,
        "currency": row.currency.upper(),
        "revenue": format_money(row.revenue, row.currency),
        "cost": format_money(row.cost, cost_currency),
        "margin": "n/a (other currency)" if row.margin is None else format_money(row.margin, row.currency),
        "margin_percent": "" if row.margin_percent is None else f"{row.margin_percent} %",
        "negative": "negative" if row.margin is not None and row.margin < 0 else "",
    }

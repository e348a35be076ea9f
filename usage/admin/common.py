"""What the usage admin pages share: the read-only base of ledger tables, and links from a row to others."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html


class ReadOnly(admin.ModelAdmin):
    """Ledger tables: viewable, never added, edited or deleted by hand."""

    list_per_page = 50

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def link(model: str, pk: Any, text: Any) -> str:
    return format_html('<a href="{}">{}</a>', reverse(f"admin:usage_{model}_change", args=[pk]), text)


def customer_link(obj: Any) -> str:
    customer = obj.customer
    return format_html(
        '<a href="{}">{}</a>',
        reverse("admin:customers_customer_change", args=[customer.pk]),
        customer.external_id,
    )

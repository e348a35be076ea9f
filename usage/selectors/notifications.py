"""The customer's notifications, unread first."""

from dataclasses import dataclass
from datetime import datetime

from customers.models import Customer, Notification


@dataclass(frozen=True)
class NotificationLine:
    id: int
    kind: str
    kind_label: str
    message: str
    created_at: datetime
    read_at: datetime | None

    @property
    def is_unread(self) -> bool:
        return self.read_at is None


@dataclass(frozen=True)
class NotificationList:
    unread_count: int
    items: tuple[NotificationLine, ...]  # unread first, newest first within each


def usage_notifications(*, customer: Customer, limit: int = 20) -> NotificationList:
    base = Notification.objects.filter(customer=customer)
    unread = list(base.filter(read_at__isnull=True).order_by("-created_at", "-id")[:limit])
    read = list(
        base.filter(read_at__isnull=False).order_by("-created_at", "-id")[: max(limit - len(unread), 0)]
    )
    unread_count = len(unread) if len(unread) < limit else base.filter(read_at__isnull=True).count()
    return NotificationList(
        unread_count=unread_count,
        items=tuple(
            NotificationLine(
                id=n.pk,
                kind=n.kind,
                kind_label=n.get_kind_display(),
                message=n.message,
                created_at=n.created_at,
                read_at=n.read_at,
            )
            for n in unread + read
        ),
    )

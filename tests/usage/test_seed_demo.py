"""``manage.py seed_demo`` makes known passwords, so it refuses to run outside development."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from customers.models import Customer

pytestmark = pytest.mark.django_db


def test_seed_demo_refuses_to_run_without_debug(settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG=true"):
        call_command("seed_demo")

    assert not get_user_model().objects.filter(username="admin").exists()
    assert not Customer.objects.exists()

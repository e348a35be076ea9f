"""The test suite's settings: the project's one settings module, with the environment set for tests.

The suite runs on PostgreSQL and Redis. The values are defaults, so ``DATABASE_URL=... pytest``
still points the tests elsewhere.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/billing")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
# Unit tests run tasks in-process; the worker tests start a real Celery worker themselves.
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "true")
os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("ALLOWED_HOSTS", "*")
os.environ.setdefault("PASSWORD_HASHERS", "django.contrib.auth.hashers.MD5PasswordHasher")
os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
os.environ.setdefault("CSRF_COOKIE_SECURE", "false")
os.environ.setdefault("STRIPE_WEBHOOK_SECRET", "whsec_test_secret")

from billing_app.settings import *  # noqa: F403

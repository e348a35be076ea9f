"""Settings, all from environment variables.

Production is the default: DEBUG off, a SECRET_KEY required, SMTP email. ``make run`` sets
``DEBUG=true`` for local development. The database is PostgreSQL, always: ``DATABASE_URL`` is
required (``make run`` starts an embedded PostgreSQL and Redis and sets both URLs). Without
``REDIS_URL`` Celery runs tasks eagerly in-process.
"""

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key" if DEBUG else environ.Env.NOTSET)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "csp",
    "django_celery_beat",
    "axes",
    "plans",
    "customers",
    "usage",
    "billing_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "billing_app.api_requests.ApiRequestMiddleware",
    # Inside the API's transaction for writes, so that the reads of a write stay on the primary.
    "billing_app.db_routers.ReplicaReadsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes requires: it turns a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "billing_app.urls"
WSGI_APPLICATION = "billing_app.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "customers.context_processors.current_plan",
            ],
        },
    },
]

# PostgreSQL is the only engine: the hand-written SQL on the hot paths, the ledger's append-only
# triggers and the row locks that keep concurrent requests from overspending are PostgreSQL's.
DATABASE_URL = env.str("DATABASE_URL", default="")
if not DATABASE_URL:
    raise ImproperlyConfigured(
        "Set DATABASE_URL to a PostgreSQL database (postgres://user@host:5432/name); "
        "`make run` starts an embedded one for you."
    )
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        f"DATABASE_URL must name a PostgreSQL database (postgres://…), not {DATABASE_URL.split(':', 1)[0]}://…."
    )
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
# DATABASE_POOLER=transaction: DATABASE_URL is a pooler in transaction mode (PgBouncer's pool_mode =
# transaction), which gives each transaction, or each statement outside one, whichever server connection is
# free. Nothing may then outlive a transaction on the server: no server-side cursor held across
# transactions (Django's .iterator() opens one WITH HOLD outside atomic blocks) and no prepared statement
# (psycopg names it on one server connection and runs it later on another). The app takes no session-level
# advisory lock, runs no SET outside a transaction and does not LISTEN; the time zone Django sets on connect
# is one of the parameters PgBouncer tracks and restores per client.
DATABASE_POOLER = env.str("DATABASE_POOLER", default="")
if DATABASE_POOLER not in ("", "transaction"):
    raise ImproperlyConfigured('DATABASE_POOLER must be "transaction" or empty (a direct connection).')
BEHIND_TRANSACTION_POOLER = DATABASE_POOLER == "transaction"
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = BEHIND_TRANSACTION_POOLER
# The API's hot statements (core/sql_rows.py) are prepared once per connection instead of planned on every
# call; the ORM's queries are not. Off behind a transaction pooler unless said otherwise: PgBouncer 1.21+
# with max_prepared_statements keeps them per client, and DATABASE_PREPARED_STATEMENTS=true turns them on.
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=not BEHIND_TRANSACTION_POOLER)
# psycopg prepares nothing while this is None (Django's default); only the cursors of core/sql_rows.py ask
# it to, and Django's own cursors bind client-side, which never prepares.
DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
    1 if DATABASE_PREPARED_STATEMENTS else None
)
# DATABASE_REPLICA_URL: a streaming replica of DATABASE_URL. The customer pages, the API's GET requests,
# reconciliation and reports read it; writes, and every read inside a transaction (money), go to the
# primary (billing_app/db_routers.py). A client that wrote reads the primary for REPLICA_PIN_SECONDS after,
# which should exceed the replica's usual replay lag. A replica further behind than REPLICA_MAX_LAG_SECONDS,
# or down, serves no reads until it is back within it.
DATABASE_REPLICA_URL = env.str("DATABASE_REPLICA_URL", default="")
REPLICA_PIN_SECONDS = env.int("REPLICA_PIN_SECONDS", default=5)
REPLICA_MAX_LAG_SECONDS = env.float("REPLICA_MAX_LAG_SECONDS", default=30.0)
DATABASE_ROUTERS: list[str] = []
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = {
        **env.db_url_config(DATABASE_REPLICA_URL),
        "CONN_MAX_AGE": DATABASES["default"]["CONN_MAX_AGE"],
        "DISABLE_SERVER_SIDE_CURSORS": BEHIND_TRANSACTION_POOLER,
        "OPTIONS": dict(DATABASES["default"]["OPTIONS"]),
        # A test run has no replica of its test database: the replica's alias reads the primary's.
        "TEST": {"MIRROR": "default"},
    }
    DATABASE_ROUTERS = ["billing_app.db_routers.PrimaryReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
PASSWORD_HASHERS = env.list(
    "PASSWORD_HASHERS",
    default=[
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    ],
)
# django-axes checks every login (the site's and the admin's) before the password is.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# After LOGIN_FAILURE_LIMIT failed logins for one username from one address, that pair is refused for
# LOGIN_LOCKOUT_MINUTES, even with the right password; a success before then clears the count. The pair,
# not the address alone, so that colleagues behind one office NAT do not lock each other out. The same
# limit counts password-reset requests per email and address (billing_app/login_protection.py).
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_LOCKOUT_MINUTES = env.int("LOGIN_LOCKOUT_MINUTES", default=15)
if AXES_FAILURE_LIMIT < 1 or LOGIN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured("LOGIN_FAILURE_LIMIT and LOGIN_LOCKOUT_MINUTES must be 1 or more.")
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "billing_app.login_protection.lockout_response"
# The address is REMOTE_ADDR, or the proxy's X-Forwarded-For entry behind BEHIND_TLS_PROXY: never a header
# the client writes itself, or each attempt could claim a new address and never be locked out.
AXES_CLIENT_IP_CALLABLE = "billing_app.login_protection.client_address"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/settings/usage"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve from the finders in development and tests so collectstatic is not a setup step.
WHITENOISE_USE_FINDERS = True

EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="billing@localhost")
# Who hears about circuit breakers, invoice spikes and reconciliation divergences.
OPERATOR_EMAILS = env.list("OPERATOR_EMAILS", default=[])
OPERATOR_SLACK_WEBHOOK_URL = env.str("OPERATOR_SLACK_WEBHOOK_URL", default="")
# The currency serving costs are recorded in (the catalog's "cost" rates, events' properties.cost) and the
# margin report sets against revenue in the same currency.
OPERATOR_CURRENCY = env.str("OPERATOR_CURRENCY", default="usd").lower()

REDIS_URL = env.str("REDIS_URL", default="")
# The API rate limit counts requests in the cache (billing_app/throttling.py). Without Redis each process
# counts on its own, so N processes let a key make up to N × its limit: acceptable for the embedded default.
# The cache shares Redis with Celery's queues, so never cache.clear() it: that is FLUSHDB.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "billing",
            # Every API request counts itself here; a stalled Redis costs each one at most this, and then
            # the limit is skipped rather than the request failed.
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
# A task is acknowledged after it ran, so a worker killed mid-task leaves it on the queue.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
# The periodic jobs; the database scheduler installs them on beat's start.
from billing_app.schedule import CELERY_BEAT_SCHEDULE  # noqa: E402, F401

STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
# Thin (v2) event destinations have their own signing secret.
STRIPE_THIN_WEBHOOK_SECRET = env.str("STRIPE_THIN_WEBHOOK_SECRET", default="")
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
STRIPE_TIMEOUT_SECONDS = env.int("STRIPE_TIMEOUT_SECONDS", default=20)
# How long a drain may hold a claimed meter event before another drain may send it.
STRIPE_OUTBOX_LEASE_SECONDS = env.int("STRIPE_OUTBOX_LEASE_SECONDS", default=120)

# Alerting: a customer whose last hour exceeds MULTIPLE × max(typical hour, plan's hour, floor) units is
# frozen (billing_app/circuit_breaker.py).
CIRCUIT_BREAKER_MULTIPLE = env.int("CIRCUIT_BREAKER_MULTIPLE", default=10)
CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY = env.int("CIRCUIT_BREAKER_MIN_HOURLY_QUANTITY", default=100)
CIRCUIT_BREAKER_HISTORY_DAYS = env.int("CIRCUIT_BREAKER_HISTORY_DAYS", default=14)
# A meter's own floor, in its units an hour, where the minimum above does not fit its scale:
# CIRCUIT_BREAKER_METER_FLOORS=llm_tokens=200000,export=20
try:
    CIRCUIT_BREAKER_METER_FLOORS = {
        key: Decimal(value) for key, value in env.dict("CIRCUIT_BREAKER_METER_FLOORS", default={}).items()
    }
except InvalidOperation as error:
    raise ImproperlyConfigured("CIRCUIT_BREAKER_METER_FLOORS: meter_key=units,... with numbers") from error
# An invoice over RATIO × the previous one is flagged to operators before it finalizes.
INVOICE_SPIKE_RATIO = env.str("INVOICE_SPIKE_RATIO", default="1.5")
RECONCILIATION_TOLERANCE_PERCENT = env.str("RECONCILIATION_TOLERANCE_PERCENT", default="1")
# Reconciliation checks the customers with usage sent to Stripe, or a Stripe invoice, in this many hours.
RECONCILIATION_ACTIVITY_HOURS = env.int("RECONCILIATION_ACTIVITY_HOURS", default=48)

# Money in (docs/stripe.md): a top-up through Checkout (or an automatic one) adds between these amounts, in the
# customer's currency; a Checkout Session stays payable this many minutes (Stripe allows 30 to 1,440).
WALLET_TOP_UP_MIN = env.str("WALLET_TOP_UP_MIN", default="5")
WALLET_TOP_UP_MAX = env.str("WALLET_TOP_UP_MAX", default="10000")
CHECKOUT_SESSION_MINUTES = env.int("CHECKOUT_SESSION_MINUTES", default=60)
# After a declined automatic top-up, the next attempt waits this long (three declines in a row turn it off).
AUTO_TOP_UP_RETRY_MINUTES = env.int("AUTO_TOP_UP_RETRY_MINUTES", default=60)
# Opening /settings/usage queues a reconciliation of the customer at most once per this many minutes.
USAGE_PAGE_RECONCILE_MINUTES = env.int("USAGE_PAGE_RECONCILE_MINUTES", default=10)

# Webhooks to the operator's backend (docs/webhooks.md): each POST waits this many seconds for an answer; a
# failing delivery is retried with backoff for WEBHOOK_RETRY_HOURS, then given up; an endpoint whose
# deliveries have all failed for WEBHOOK_DISABLE_AFTER_HOURS is turned off and operators are told.
WEBHOOK_TIMEOUT_SECONDS = env.int("WEBHOOK_TIMEOUT_SECONDS", default=10)
WEBHOOK_RETRY_HOURS = env.int("WEBHOOK_RETRY_HOURS", default=72)
WEBHOOK_DISABLE_AFTER_HOURS = env.int("WEBHOOK_DISABLE_AFTER_HOURS", default=24)
# wallet.low_balance: a draw took the wallet from at least this to below it (in the wallet's currency).
WALLET_LOW_BALANCE = env.str("WALLET_LOW_BALANCE", default="10")
# credits.expiring: a grant with credits left expires within this many days (announced once per grant).
CREDITS_EXPIRING_DAYS = env.int("CREDITS_EXPIRING_DAYS", default=7)
# Price changes (docs/catalog.md, "Migrating subscribers"): a migration at renewal is scheduled at least this many
# days ahead; a reminder goes out this many days before its date; a migrated customer whose first period on the
# new version costs more than (100 + PERCENT)% of what the old version would have charged is credited the
# difference.
PRICE_CHANGE_NOTICE_DAYS = env.int("PRICE_CHANGE_NOTICE_DAYS", default=60)
PRICE_CHANGE_REMINDER_DAYS = env.int("PRICE_CHANGE_REMINDER_DAYS", default=7)
PRICE_CHANGE_SAFETY_NET_PERCENT = env.str("PRICE_CHANGE_SAFETY_NET_PERCENT", default="10")
try:
    _safety_net_percent = Decimal(PRICE_CHANGE_SAFETY_NET_PERCENT)
except InvalidOperation as error:
    raise ImproperlyConfigured("PRICE_CHANGE_SAFETY_NET_PERCENT must be a number, e.g. 10") from error
if not _safety_net_percent.is_finite() or _safety_net_percent < 0 or PRICE_CHANGE_NOTICE_DAYS < 1:
    raise ImproperlyConfigured(
        "PRICE_CHANGE_SAFETY_NET_PERCENT must be 0 or more, PRICE_CHANGE_NOTICE_DAYS 1 or more."
    )
# Where customers reach this site: the links in emails (a price change's one-click choice) start with it.
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

# Requests a minute an API key may make, unless the key has its own limit (admin, API keys). 0 or empty: no
# limit. 6,000 (100 a second) is far above what a backend that batches its events needs.
API_RATE_LIMIT_PER_MINUTE = int(env.str("API_RATE_LIMIT_PER_MINUTE", default="6000") or 0)
if API_RATE_LIMIT_PER_MINUTE < 0:
    raise ImproperlyConfigured("API_RATE_LIMIT_PER_MINUTE must be 0 (no limit) or more.")

# Seconds a web process trusts an API key it has read, without reading it again: a key revoked (or its
# limit changed) in admin is refused by the process that served admin at once, and by every other process
# within this bound. 0: read the key on every request.
API_KEY_CACHE_SECONDS = env.int("API_KEY_CACHE_SECONDS", default=5)
if API_KEY_CACHE_SECONDS < 0:
    raise ImproperlyConfigured("API_KEY_CACHE_SECONDS must be 0 (no cache) or more.")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["billing_app.api_auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "billing_app.api_auth.ApiKeyScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["billing_app.throttling.ApiKeyRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["usage.api.parsers.DecimalJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "billing_app.api_schema.ApiAutoSchema",
    "EXCEPTION_HANDLER": "billing_app.api_errors.api_exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Billing metering API",
    "DESCRIPTION": "Usage events, entitlement checks, reservations and customer usage.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "REDOC_DIST": "SIDECAR",
    # Answers are typed with their choices; these name the enums that would otherwise collide by field name.
    "ENUM_NAME_OVERRIDES": {
        "ReservationStatusEnum": "usage.models.ReservationStatus",
        "SubscriptionStatusEnum": "customers.models.SubscriptionStatus",
        "CustomerStatusEnum": "customers.models.CustomerStatus",
        "GrantKindEnum": "usage.models.GrantKind",
        "UsageLevelEnum": "usage.selectors.meter_lines.UsageLevel",
        "EventResultStatusEnum": ["accepted", "duplicate", "refused"],
        "ReservationObjectEnum": ["reservation"],
        "CustomerObjectEnum": ["customer"],
        "CreditGrantObjectEnum": ["credit_grant"],
        "CreditLedgerEntryObjectEnum": ["credit_ledger_entry"],
        "ListObjectEnum": ["list"],
    },
}

# Content-Security-Policy (django-csp) on every response. No page has an inline script or <style>: scripts
# and stylesheets come from our own static files, plotly's stylesheet from the plotly wheel (usage/views.py,
# plotly_css) so that it injects none, and htmx is told not to inject its indicator styles (base.html).
# Inline style *attributes* are allowed: the usage bars are sized by them (style="width: 40%"), and plotly
# positions its SVG layers with them. An attribute cannot load anything or match other elements, so what
# an injected one could do is limited to the look of one element; <style> elements and every script
# remain refused. /api/docs relaxes styles for Redoc (billing_app/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-elem": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# The largest valid event batch (1,000 events with 8 KB of properties each) is about 9.3 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# Usage rules the API enforces; see docs/api.md.
USAGE_MAX_BATCH = 1000
USAGE_MAX_EVENT_AGE_DAYS = 35
USAGE_MAX_CLOCK_SKEW_SECONDS = 300
# The usage ledger's monthly partitions (usage/partitions.py): made this many months ahead, and, when a
# retention is set, months wholly older than it (and of closed periods) are detached, never dropped.
USAGE_PARTITIONS_AHEAD_MONTHS = env.int("USAGE_PARTITIONS_AHEAD_MONTHS", default=3)
USAGE_EVENT_RETENTION_MONTHS = env.int("USAGE_EVENT_RETENTION_MONTHS", default=None) or None
RESERVATION_DEFAULT_TTL_SECONDS = 300
IDEMPOTENCY_KEY_RETENTION_DAYS = env.int("IDEMPOTENCY_KEY_RETENTION_DAYS", default=30)

BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)
if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    # TLS usually ends at a proxy in front of the app; these trust its header and are opt-in, because
    # HSTS cannot be taken back from browsers that have seen it.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # The SDK logs every request at INFO.
    "loggers": {"stripe": {"level": "WARNING"}},
}

"""Money helpers: currency minor units, rounding, Stripe amounts and display.

Pure Python on `Decimal`; no Django and never `float`. Amounts are in major units of their currency
(dollars, yen, dinars) until `to_minor_units` turns them into the integer Stripe expects.
"""

from decimal import ROUND_HALF_UP, Context, Decimal

# The name of the custom pricing unit. Credits are counted, not money: no minor unit, never rounded.
CREDITS = "credits"

# Stripe's currency rules (https://docs.stripe.com/currencies): these are charged in whole units ...
ZERO_DECIMAL_CURRENCIES = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
# ... and these in thousandths. Every other currency has cents.
THREE_DECIMAL_CURRENCIES = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

# The ISO 4217 codes of money in circulation (2025). Left out on purpose: precious metals (XAU...), fund and
# index units (BOV, CLF, USN...) and the testing and "no currency" codes (XTS, XXX), none of which a
# customer pays in.
ISO_4217_CURRENCIES = frozenset(
    [
        "aed",
        "afn",
        "all",
        "amd",
        "ang",
        "aoa",
        "ars",
        "aud",
        "awg",
        "azn",
        "bam",
        "bbd",
        "bdt",
        "bgn",
        "bhd",
        "bif",
        "bmd",
        "bnd",
        "bob",
        "brl",
        "bsd",
        "btn",
        "bwp",
        "byn",
        "bzd",
        "cad",
        "cdf",
        "chf",
        "clp",
        "cny",
        "cop",
        "crc",
        "cuc",
        "cup",
        "cve",
        "czk",
        "djf",
        "dkk",
        "dop",
        "dzd",
        "egp",
        "ern",
        "etb",
        "eur",
        "fjd",
        "fkp",
        "gbp",
        "gel",
        "ghs",
        "gip",
        "gmd",
        "gnf",
        "gtq",
        "gyd",
        "hkd",
        "hnl",
        "htg",
        "huf",
        "idr",
        "ils",
        "inr",
        "iqd",
        "irr",
        "isk",
        "jmd",
        "jod",
        "jpy",
        "kes",
        "kgs",
        "khr",
        "kmf",
        "kpw",
        "krw",
        "kwd",
        "kyd",
        "kzt",
        "lak",
        "lbp",
        "lkr",
        "lrd",
        "lsl",
        "lyd",
        "mad",
        "mdl",
        "mga",
        "mkd",
        "mmk",
        "mnt",
        "mop",
        "mru",
        "mur",
        "mvr",
        "mwk",
        "mxn",
        "myr",
        "mzn",
        "nad",
        "ngn",
        "nio",
        "nok",
        "npr",
        "nzd",
        "omr",
        "pab",
        "pen",
        "pgk",
        "php",
        "pkr",
        "pln",
        "pyg",
        "qar",
        "ron",
        "rsd",
        "rub",
        "rwf",
        "sar",
        "sbd",
        "scr",
        "sdg",
        "sek",
        "sgd",
        "shp",
        "sle",
        "sll",
        "sos",
        "srd",
        "ssp",
        "stn",
        "svc",
        "syp",
        "szl",
        "thb",
        "tjs",
        "tmt",
        "tnd",
        "top",
        "try",
        "ttd",
        "twd",
        "tzs",
        "uah",
        "ugx",
        "usd",
        "uyu",
        "uzs",
        "ved",
        "ves",
        "vnd",
        "vuv",
        "wst",
        "xaf",
        "xcd",
        "xcg",
        "xof",
        "xpf",
        "yer",
        "zar",
        "zmw",
        "zwg",
        "zwl",
    ]
)
# Ledger amounts and rates are stored with 12 decimal places (a token can cost $0.000002). A computed amount
# (credits turned into money, money into credits) is quantized to that once, so a balance and the sum of
# its rows agree to the last digit.
LEDGER_PLACES = Decimal("0.000000000001")
# Quantities (tokens, calls, credits used) are stored with 6.
QUANTITY_PLACES = Decimal("0.000001")

_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}

# Rounding and scaling use their own context so they behave the same whatever context the caller is in
# (the rating engine computes under one that traps inexact results, and rounding is inexact on purpose).
_MONEY_CONTEXT = Context(prec=60, rounding=ROUND_HALF_UP)


def ledger_amount(value: Decimal) -> Decimal:
    """``value`` at the ledger's precision."""
    return value.quantize(LEDGER_PLACES)


def currency_exponent(currency: str) -> int:
    """Number of decimal places of the currency's minor unit: 0 for JPY, 3 for KWD, 2 otherwise.

    Raises ValueError for something that is not a three-letter currency code, `CREDITS` included: credits
    are never rounded, and asking for their minor unit is a bug.
    """
    code = currency.lower()
    if code == CREDITS:
        raise ValueError("Credits are not a currency and have no minor unit.")
    if len(code) != 3 or not code.isalpha():
        raise ValueError(f"{currency!r} is not a three-letter currency code.")
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def _minor_unit(currency: str) -> Decimal:
    """The currency's smallest amount as a quantum: Decimal('0.01') for USD, Decimal('1') for JPY."""
    return Decimal(1).scaleb(-currency_exponent(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round `amount` (major units) to the currency's minor unit, halves away from zero: 0.125 USD -> 0.13."""
    return amount.quantize(_minor_unit(currency), rounding=ROUND_HALF_UP, context=_MONEY_CONTEXT)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """The integer Stripe expects: 12.34 USD -> 1234, 1235 JPY -> 1235, 1.234 KWD -> 1234.

    The one place that makes a Stripe amount. It is exact: an amount finer than the minor unit raises
    ValueError instead of being rounded silently, so callers decide where rounding happens (`round_money`).
    Trailing zeros are fine: 7.500000 USD is 750 cents.
    """
    if not isinstance(amount, Decimal):
        raise TypeError(f"Money must be a Decimal, not {type(amount).__name__}.")
    if not amount.is_finite():
        raise ValueError(f"{amount} is not an amount of money.")
    rounded = round_money(amount, currency)
    if rounded != amount:
        raise ValueError(f"{amount} is finer than the {currency.upper()} minor unit; use round_money first.")
    return int(rounded.scaleb(currency_exponent(currency), context=_MONEY_CONTEXT))


def format_money(amount: Decimal, currency: str) -> str:
    """Display text, rounded to the minor unit: "$1,234.50", "¥1,235", "-€3.00", "12.00 SEK"."""
    rounded = round_money(amount, currency)
    digits = f"{abs(rounded):,.{currency_exponent(currency)}f}"
    sign = "-" if rounded < 0 else ""
    symbol = _SYMBOLS.get(currency.lower())
    if symbol is None:
        return f"{sign}{digits} {currency.upper()}"
    return f"{sign}{symbol}{digits}"

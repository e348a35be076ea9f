"""Run the fake by hand: ``python -m tests.stripe_fake --port 12111``.

Point an app at it with ``stripe.api_base = "http://127.0.0.1:12111"`` (or the StripeClient
``base_addresses``) and any ``sk_test_...`` key; drive it with the control API under ``/_fake/``.
"""

import argparse
import threading

from .server import FakeStripe


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.stripe_fake", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    options = parser.parse_args()
    fake = FakeStripe(options.host, options.port, quiet=options.quiet).start()
    print(
        f"Fake Stripe listening on {fake.url}  (control API: {fake.url}/_fake/...; Ctrl-C stops)", flush=True
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()

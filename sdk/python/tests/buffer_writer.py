"""Writes usage events through a client with a buffer, prints each result's status, and exits.

The first process of the buffering tests' restart: ``python buffer_writer.py BUFFER CUSTOMER PREFIX COUNT
[--async]``, with ``BILLING_API_KEY`` and ``BILLING_API_BASE`` in the environment. Event ``n`` is
``{PREFIX}-{n}`` of quantity ``n + 1`` on the ``api_call`` meter.
"""

import argparse
import asyncio
import json
from typing import Any

from billing_client import AsyncClient, Client


def event(customer: str, prefix: str, n: int) -> dict[str, Any]:
    return {"customer": customer, "meter": "api_call", "quantity": n + 1, "idempotency_key": f"{prefix}-{n}"}


def write(buffer: str, customer: str, prefix: str, count: int) -> list[str]:
    with Client(buffer_path=buffer) as billing:
        return [billing.events.create(**event(customer, prefix, n))["status"] for n in range(count)]


async def write_awaited(buffer: str, customer: str, prefix: str, count: int) -> list[str]:
    async with AsyncClient(buffer_path=buffer) as billing:
        return [(await billing.events.create(**event(customer, prefix, n)))["status"] for n in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("buffer")
    parser.add_argument("customer")
    parser.add_argument("prefix")
    parser.add_argument("count", type=int)
    parser.add_argument("--async", dest="awaited", action="store_true")
    args = parser.parse_args()
    if args.awaited:
        statuses = asyncio.run(write_awaited(args.buffer, args.customer, args.prefix, args.count))
    else:
        statuses = write(args.buffer, args.customer, args.prefix, args.count)
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing_app.models import ApiKey
from customers.models import Customer


class Command(BaseCommand):
    help = (
        "Create an API key for a backend (or, with --customer ID --publishable, a customer's publishable key "
        "for its frontend) and print it (shown once; only its hash is kept)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", help="Who uses the key, e.g. 'production backend'.")
        # The name as a plain argument too, as the first version of this command (api_key_create) took it.
        parser.add_argument("positional_name", nargs="?", metavar="NAME", help="The same as --name.")
        parser.add_argument(
            "--rate-limit-per-minute",
            type=int,
            default=None,
            help="Requests a minute this key may make (0: no limit). Default: API_RATE_LIMIT_PER_MINUTE.",
        )

        parser.add_argument(
            "--customer", help="The external id of the customer a publishable key belongs to."
        )
        parser.add_argument(
            "--publishable",
            action="store_true",
            help="A publishable key (pk_…): it may only read the customer's usage and ask /check about it.",
        )

    def handle(self, *args: object, **options: object) -> None:
        name = options["name"] or options["positional_name"]
        limit = options["rate_limit_per_minute"]
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise CommandError("--rate-limit-per-minute must be 0 (no limit) or more.")
        if options["publishable"] or options["customer"]:
            if not (options["publishable"] and options["customer"]):
                raise CommandError("A customer's key is a publishable one: give --customer ID --publishable.")
            customer = Customer.objects.filter(external_id=str(options["customer"])).first()
            if customer is None:
                raise CommandError(f"No customer with external id {options['customer']!r}.")
            _, raw_key = ApiKey.generate_publishable(
                customer=customer, name=str(name) if name else None, rate_limit_per_minute=limit
            )
        elif not name:
            raise CommandError("Give the key a name: --name 'production backend'.")
        else:
            _, raw_key = ApiKey.generate(name=str(name), rate_limit_per_minute=limit)
        self.stdout.write(raw_key)

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing_app.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for a backend and print its secret (shown once; only its hash is kept)."

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

    def handle(self, *args: object, **options: object) -> None:
        name = options["name"] or options["positional_name"]
        if not name:
            raise CommandError("Give the key a name: --name 'production backend'.")
        limit = options["rate_limit_per_minute"]
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise CommandError("--rate-limit-per-minute must be 0 (no limit) or more.")
        _, raw_key = ApiKey.generate(name=str(name), rate_limit_per_minute=limit)
        self.stdout.write(raw_key)

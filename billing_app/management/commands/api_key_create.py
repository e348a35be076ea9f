from django.core.management.base import BaseCommand, CommandParser

from billing_app.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for a backend and print its secret (shown once; only its hash is kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who uses the key, e.g. 'production backend'.")

    def handle(self, *args: object, **options: str) -> None:
        _, raw_key = ApiKey.generate(name=options["name"])
        self.stdout.write(raw_key)

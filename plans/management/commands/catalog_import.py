"""`manage.py catalog_import FILE.json`: make the catalog match a file (the format is in docs/catalog.md)."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import BillingError
from plans.catalog import catalog_decode
from plans.catalog.importing import catalog_import


class Command(BaseCommand):
    help = (
        "Create or update meters and publish plan versions from a catalog file, in one transaction. "
        "Importing the same file again changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="The catalog JSON file, e.g. catalog/demo.json.")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CommandError(f"Cannot read {path}: {error.strerror}.") from error
        try:
            report = catalog_import(data=catalog_decode(text))
        except BillingError as error:
            raise CommandError(f"{path}: nothing was imported. {error.message}") from error
        if options["verbosity"] < 1:
            return
        for line in report.lines:
            self.stdout.write(f"  {line}")
        if report.changed:
            self.stdout.write(self.style.SUCCESS(f"Imported {path}."))
        else:
            self.stdout.write(f"Nothing changed: the catalog already matches {path}.")

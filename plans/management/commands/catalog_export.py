"""`manage.py catalog_export [FILE]`: write the catalog in the format `catalog_import` reads."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plans.catalog import catalog_current, catalog_dumps


class Command(BaseCommand):
    help = (
        "Write every meter and the latest published version of every plan as a catalog file "
        "(to stdout without FILE). Importing the output changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", type=Path, help="Where to write; stdout when omitted.")

    def handle(self, *args: Any, **options: Any) -> None:
        text = catalog_dumps(catalog_current())
        path: Path | None = options["file"]
        if path is None:
            self.stdout.write(text, ending="")
            return
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            raise CommandError(f"Cannot write {path}: {error.strerror}.") from error
        self.stderr.write(f"Wrote {path}.")

"""The catalog file: parse, validate, serialize and import the JSON format of docs/catalog.md.

`catalog_import` and `catalog_export` share this package, so a file they write reads back unchanged. Parsing
is pure (no database): it checks the structure, refuses floats, and runs each price through the rating
engine's `validate_price`, reporting every problem with where it is (`plan "pro", prices[1] (llm_tokens)`).
The caller passes the meter keys the database has, so that a price naming an unknown meter is reported too.

A plan version's pricing content is a `VersionContent`; its prices are the rating engine's own `PriceSpec`s.
`content_hash` hashes the canonical JSON of that content, so two versions with the same prices hash alike
however their decimals were written ("20", "20.00", 20.0000 in the database).

`parse` reads a file, `serialize` writes one, and `content` holds what both deal in; the names callers
import are re-exported here. `importing` makes the database match a file: it writes through `plans.services`,
which reads this package, so `catalog_import` is imported from its module rather than re-exported here.
"""

from plans.catalog.content import (
    CreditPackEntry,
    EntitlementEntry,
    PlanEntry,
    VersionContent,
    catalog_current,
    version_content,
)
from plans.catalog.parse import CatalogInvalid, catalog_decode, catalog_parse, version_content_parse
from plans.catalog.serialize import catalog_data, catalog_dumps, content_hash

__all__ = [
    "CatalogInvalid",
    "CreditPackEntry",
    "EntitlementEntry",
    "PlanEntry",
    "VersionContent",
    "catalog_current",
    "catalog_data",
    "catalog_decode",
    "catalog_dumps",
    "catalog_parse",
    "content_hash",
    "version_content",
    "version_content_parse",
]

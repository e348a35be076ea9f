"""Model instances from hand-written SQL, for the few reads on the API's hot paths.

Building a query through the ORM costs more than the database takes to run it: 0.3-0.4 ms for a
one-table lookup on the reference machine, 1.5 ms for a customer with four joined rows, against
0.1-0.15 ms for the same statements written out. ``/check``, reserve and commit make several each.

``ModelColumns`` writes a model's column list into such a statement and turns the values that come
back into an instance the way the ORM does (the backend's and the field's converters, then
``Model.from_db``), so a statement stays in step with its model. ``selects_run`` sends several
statements in one round trip, so a lock and the reads that must follow it cost one wait.

These statements, and the writes of ``writes_run``, are prepared: bound server-side and parsed and planned
by PostgreSQL once per connection, not on every call. Planning was most of what PostgreSQL spent on them: the customer
with four joined rows cost 0.38 ms of its CPU a call written out, 0.08 ms prepared. The ORM's own queries
stay bound client-side, as Django sends them.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import psycopg
from django.conf import settings
from django.db import connection
from django.db.models import Expression, Field, Model, QuerySet

M = TypeVar("M", bound=Model)
# One SQL statement and its parameters.
Statement = tuple[str, list[Any]]
Converter = Callable[[Any, Any, Any], Any]


class Columns:
    """Columns of a hand-written SELECT, each typed by the model field its values come from.

    An aggregate such as ``SUM(r.quantity)`` is typed by the field it sums, so its value is
    converted like the field's.
    """

    def __init__(self, columns: Sequence[tuple[str, Field]]) -> None:
        self.expressions = [expression for expression, _ in columns]
        self.fields = [field for _, field in columns]
        self.sql = ", ".join(self.expressions)
        self._converters: list[tuple[int, list[Converter], Any]] | None = None

    def __len__(self) -> int:
        return len(self.fields)

    def convert(self, values: Sequence[Any]) -> list[Any]:
        converted = list(values)
        for index, converters, column in self._converters_for_connection():
            value = converted[index]
            for converter in converters:
                value = converter(value, column, connection)
            converted[index] = value
        return converted

    def _converters_for_connection(self) -> list[tuple[int, list[Converter], Any]]:
        """The converters the ORM's compiler would apply to each column, found once."""
        if self._converters is None:
            found = []
            for index, field in enumerate(self.fields):
                column = field.get_col(field.model._meta.db_table)
                converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
                if converters:
                    found.append((index, converters, column))
            self._converters = found
        return self._converters


class ModelColumns(Columns, Generic[M]):
    """Every concrete column of ``model`` under the table alias ``alias``, and instances built from them."""

    def __init__(self, model: type[M], alias: str) -> None:
        self.model = model
        concrete = model._meta.concrete_fields
        super().__init__([(f'{alias}."{field.column}"', field) for field in concrete])
        self.attnames = [field.attname for field in concrete]

    def build(self, values: Sequence[Any]) -> M:
        return self.model.from_db(connection.alias, self.attnames, self.convert(values))

    def build_joined(self, values: Sequence[Any]) -> M | None:
        """The instance from a LEFT JOIN's columns, or None when the join found no row."""
        primary_key = values[self.attnames.index(self.model._meta.pk.attname)]
        return None if primary_key is None else self.build(values)


def related_cache(instance: Model, name: str, related: Model | None) -> None:
    """Cache ``related`` as ``instance.<name>``, forward or reverse, as ``select_related`` does.

    A reverse one-to-one cached as None reads as ``DoesNotExist`` without a query.
    """
    relation: Any = instance._meta.get_field(name)
    relation.set_cached_value(instance, related)


def row_slices(row: Sequence[Any], *widths: int) -> list[Sequence[Any]]:
    """Cut a joined row into the values of each table, in order, by their column counts."""
    slices, start = [], 0
    for width in widths:
        slices.append(row[start : start + width])
        start += width
    return slices


class _PreparingCursor(psycopg.Cursor[tuple[Any, ...]]):
    """Binds parameters server-side and has PostgreSQL prepare each statement on its first run on the
    connection (``DATABASE_PREPARED_STATEMENTS``); psycopg keeps the prepared names per connection."""

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, **kwargs: Any) -> Any:
        return super().execute(query, params, prepare=settings.DATABASE_PREPARED_STATEMENTS, **kwargs)


@dataclass(frozen=True)
class _SentQuery:
    query: bytes


class _RoundTrip:
    """The cursor Django's cursor wrapper drives for ``selects_run`` and ``writes_run``: executing it runs
    each statement prepared, all in one round trip (libpq's pipeline mode). Through the wrapper, the trip
    gets Django's checks, its execute wrappers and one entry in the query log, as one query would."""

    def __init__(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        self.statements = statements
        self.results: list[list[tuple[Any, ...]]] = []
        self._query: _SentQuery | None = None  # what Django's query log reads (``last_executed_query``)

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        """Run the statements (``sql`` and ``params`` are their joined text, for the wrapper's log)."""
        self._query = _SentQuery(sql.encode())
        raw: psycopg.Connection[Any] = connection.connection
        cursors = [_PreparingCursor(raw) for _ in self.statements]
        try:
            if len(cursors) == 1:
                cursors[0].execute(*self.statements[0])
            else:
                with raw.pipeline():
                    for cursor, (statement, values) in zip(cursors, self.statements, strict=True):
                        cursor.execute(statement, values)
            self.results = [cursor.fetchall() if cursor.description else [] for cursor in cursors]
        finally:
            for cursor in cursors:
                cursor.close()

    def close(self) -> None:
        pass


def _round_trip(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    trip = _RoundTrip(statements)
    # Django's own wrapping of a new cursor (what ``connection.cursor()`` does with the driver's).
    with connection._prepare_cursor(trip) as cursor:  # type: ignore[attr-defined]
        cursor.execute(
            ";\n".join(sql for sql, _ in statements), [p for _, params in statements for p in params]
        )
    return trip.results


def selects_run(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
    """Run SELECT statements in order and return each one's rows, in one round trip.

    Each runs in turn, with its own snapshot under READ COMMITTED, so reads that follow a ``FOR UPDATE``
    in the same trip see what the previous holder of the lock committed.
    """
    return _round_trip(statements)


def writes_run(statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Run INSERT and UPDATE statements in order, prepared, in one round trip."""
    if statements:
        _round_trip(statements)


class Slot(Expression):
    """A value given each time a statement compiled once is run (``select_compile``).

    It stands where a value would in a queryset, so the rule stays written once, in the ORM, and its SQL
    is not compiled again on every request.
    """

    def __init__(self, name: str, output_field: Field | None = None) -> None:
        super().__init__(output_field=output_field)
        self.name = name

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        return "%s", [self]


@dataclass(frozen=True)
class CompiledSelect:
    sql: str
    params: tuple[Any, ...]

    def bind(self, values: Mapping[str, Any]) -> list[Any]:
        """The parameters, each ``Slot`` replaced by its value in ``values``."""
        return [values[param.name] if isinstance(param, Slot) else param for param in self.params]


def select_compile(queryset: QuerySet[Any, Any]) -> CompiledSelect:
    """The queryset's SELECT, with its ``Slot`` parameters left to ``bind``. Callers cache the result."""
    sql, params = queryset.query.get_compiler(connection=connection).as_sql()
    return CompiledSelect(sql, tuple(params))


def placeholders(count: int) -> str:
    """``%s, %s, ...`` for an IN list of ``count`` parameters; callers never ask for an empty list."""
    return ", ".join(["%s"] * count)


# --- writes --------------------------------------------------------------------------------------


def _save_value(field: Field, instance: Model, *, add: bool) -> Any:
    """A field's value as ``save`` would write it (``auto_now`` fields take the time)."""
    return field.get_db_prep_save(field.pre_save(instance, add), connection)


def rows_insert_statement(instances: Sequence[Model]) -> list[Statement]:
    """The INSERT of the instances of one model in one statement (none for no instance); ids the database
    generates are not read back.

    For the rows a hot path writes and never reads again in the same request (ledger entries, outbox
    rows) or whose primary key is set beforehand (reservations): the ORM's insert compiled for 0.3 ms.
    """
    if not instances:
        return []
    model = type(instances[0])
    fields = [
        field
        for field in model._meta.concrete_fields
        if not (field.primary_key and getattr(instances[0], field.attname) is None)
    ]
    columns = ", ".join(f'"{field.column}"' for field in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = f"INSERT INTO {model._meta.db_table} ({columns}) VALUES {', '.join([row] * len(instances))}"  # noqa: S608
    return [(sql, [_save_value(field, instance, add=True) for instance in instances for field in fields])]


def rows_update_statements(instances: Sequence[Model], names: Sequence[str]) -> list[Statement]:
    """The UPDATEs of the named fields of each instance, by primary key."""
    if not instances:
        return []
    model = type(instances[0])
    fields = [cast(Field, model._meta.get_field(name)) for name in names]
    pk = model._meta.pk
    assignments = ", ".join(f'"{field.column}" = %s' for field in fields)
    sql = f'UPDATE {model._meta.db_table} SET {assignments} WHERE "{pk.column}" = %s'  # noqa: S608
    return [
        (
            sql,
            [
                *(_save_value(field, instance, add=False) for field in fields),
                pk.get_db_prep_value(instance.pk, connection),
            ],
        )
        for instance in instances
    ]


def rows_insert(instances: Sequence[Model]) -> None:
    """INSERT the instances of one model in one statement (``rows_insert_statement``)."""
    writes_run(rows_insert_statement(instances))


def rows_update(instances: Sequence[Model], names: Sequence[str]) -> None:
    """UPDATE the named fields of each instance by primary key, all in one round trip."""
    writes_run(rows_update_statements(instances, names))

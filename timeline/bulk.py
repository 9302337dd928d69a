"""One Core statement for many rows, through the driver's `executemany`.

SQLAlchemy's own executemany builds a dict per row and passes every value of every row through
its type (a datetime through two functions, JSON through `json.dumps`), values the batch shares
(its `now`) included; for bulk writers (campaigns) that costs more than the database does. Here
a statement is compiled once per dialect, each bind's processor is looked up once, values
shared by the whole batch (and the columns' Python-side defaults) are processed once, and each
row contributes only what is its own.

`driver_rows` runs such a statement once, for a hot path's read: compiled once per dialect
too, where SQLAlchemy works out a cache key for every execution by walking the whole
statement (for routing's statements of several CTEs, more than the database's own work).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BindParameter, ClauseElement, Column, CursorResult, bindparam
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the binds, in the order the driver takes them
    positional: bool
    processors: tuple[Processor, ...]
    written: Mapping[str, Any]  # binds the statement or its columns' fixed defaults fill
    computed: Mapping[str, Callable[[], Any]]  # columns' defaults worked out per batch (`now`)


def execute_many(
    session: Session,
    statement: UpdateBase,
    rows: Sequence[Mapping[str, Any]],
    shared: Mapping[str, Any] | None = None,
) -> None:
    """Run `statement` (an insert or update with named `bindparam`s, built once) for each row.

    A bind named in `shared` takes that value for every row, the others the row's own; values
    written into the statement and the defaults of columns it leaves out apply as usual.
    """
    if not rows:
        return
    compiled = _compile(statement, session.get_bind().dialect)
    computed = {name: work() for name, work in compiled.computed.items()}
    once = {**compiled.written, **computed, **(shared or {})}
    # Per bind: the row's own value (processed per row), or the batch's (processed here).
    steps = [
        (name, proc, False, None) if name not in once
        else (name, proc, True, proc(once[name]) if proc else once[name])
        for name, proc in zip(compiled.names, compiled.processors, strict=True)
    ]  # fmt: skip
    params: list[Any] = [
        tuple(
            value if fixed else proc(row[name]) if proc else row[name]
            for name, proc, fixed, value in steps
        )
        for row in rows
    ]
    if not compiled.positional:
        params = [dict(zip(compiled.names, values, strict=True)) for values in params]
    session.connection().exec_driver_sql(compiled.sql, params)


def driver_rows(
    session: Session, statement: ClauseElement, params: Mapping[str, Any]
) -> CursorResult[*tuple[Any, ...]]:
    """Run `statement` (built once, named `bindparam`s) once with `params`; its rows as the
    driver returns them, without SQLAlchemy's result types: only for columns whose driver
    values are what the caller wants (asyncpg: aware UTC datetimes, lists for arrays)."""
    compiled = _compile(statement, session.get_bind().dialect)
    given = {**compiled.written, **{n: work() for n, work in compiled.computed.items()}, **params}
    values = tuple(
        proc(given[name]) if proc else given[name]
        for name, proc in zip(compiled.names, compiled.processors, strict=True)
    )
    if not compiled.positional:
        named = dict(zip(compiled.names, values, strict=True))
        return session.connection().exec_driver_sql(compiled.sql, named)
    return session.connection().exec_driver_sql(compiled.sql, values)


def binds(names: str) -> dict[str, BindParameter[Any]]:
    """`{name: bindparam(name)}` for each of the space-separated `names`: a statement's
    values, to be given per row or shared."""
    return {name: bindparam(name) for name in names.split()}


@functools.lru_cache(maxsize=64)
def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    names = tuple(compiled.positiontup or compiled.binds)
    processors = tuple(_processor(compiled.binds[name].type, dialect) for name in names)
    prefetch: list[Column[Any]] = [*compiled.insert_prefetch, *compiled.update_prefetch]
    written = {name: b.effective_value for name, b in compiled.binds.items() if not b.required}
    computed: dict[str, Callable[[], Any]] = {}
    for column in prefetch:
        default = column.default if column.default is not None else column.onupdate
        arg = getattr(default, "arg", None)
        if callable(arg):  # a plain function given as default is wrapped to take a context
            computed[column.key] = functools.partial(arg, None)
        else:
            written[column.key] = arg
    return _Compiled(
        compiled.string, names, bool(compiled.positional), processors, written, computed
    )


def _processor(type_: Any, dialect: Dialect) -> Processor:
    processor: Processor = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor

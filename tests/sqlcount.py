"""Counting what a piece of code asks of the database: statements and the rows they return.

A statement count alone misses a query that reads the whole table where it should read a
host's share of it (one query, but its rows grow with the fleet), so rows are counted too
(the DB-API cursor's `rowcount` after each statement). Used by the scale regression tests
and by the scale bench (bench/scale.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connection


@dataclass
class SqlCount:
    """Statements run and rows they returned (or changed) inside `counting_sql()`."""

    statements: int = 0
    rows: int = 0
    sql: list[str] = field(default_factory=list)


@contextmanager
def counting_sql() -> Iterator[SqlCount]:
    """Count the default connection's statements and rows while the block runs."""
    count = SqlCount()

    def wrapper(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        result = execute(sql, params, many, context)
        count.statements += 1
        count.sql.append(sql)
        rowcount = getattr(context["cursor"], "rowcount", -1)
        count.rows += max(int(rowcount or 0), 0)
        return result

    with connection.execute_wrapper(wrapper):
        yield count

"""A page of a listing and the listing's total, read in one statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Row, Select, func, select
from sqlalchemy.orm import Session

_TOTAL = "page_total"


def read_page(
    session: Session,
    statement: Select[Any],
    table: FromClause,
    conditions: Sequence[ColumnElement[bool]],
    limit: int,
    offset: int,
) -> tuple[list[Row[Any]], int]:
    """The rows of `statement` (filtered by `conditions`, already ordered) from `offset`, and how many rows match.

    The total rides along as an uncorrelated scalar subquery, which SQLite and MariaDB evaluate once: a page is
    one statement instead of two. Synchronous, for `Store.read`. Each row carries the
    total as its last column; a page past the end has no row to carry it, so that case counts on its own."""
    total_of = select(func.count()).select_from(table).where(*conditions)
    page = statement.add_columns(total_of.scalar_subquery().label(_TOTAL)).where(*conditions)
    page = page.limit(limit).offset(offset)
    if any(column.get("entity") is not None for column in statement.column_descriptions):
        rows = list(session.execute(page).all())
    else:
        # Table columns only: run as a Core statement, without the ORM's loading of each row (a tenth of a page).
        rows = list(session.connection().execute(page).all())
    if rows:
        return rows, int(rows[0][-1])
    if offset == 0:
        return rows, 0
    return rows, int(session.scalar(total_of) or 0)

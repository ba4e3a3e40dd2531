"""Page cursors of the append-only lists (a node's events, the audit log).

A cursor is the `next_cursor` a page returned, opaque to clients; one this API did not give
out is refused with 400 and what to do, before any read.
"""

from __future__ import annotations

from fastapi import HTTPException, Query

from provisioner.inventory import keys

CURSOR = Query(None, max_length=64, description="next_cursor of the previous page; omit it "
               "for the first page")


def checked_cursor(cursor: str | None) -> str:
    """The store cursor for `cursor` ("" for the first page); 400 when it is not one of ours."""
    if not cursor:
        return ""
    if not keys.is_seq(cursor):
        raise HTTPException(400, f"cursor {cursor[:64]!r} is not a next_cursor this API gave "
                            "out; repeat the request without ?cursor= to start from the "
                            "first page")
    return cursor

"""Readable text of psycopg2.sql objects, for unit tests that fake a cursor."""

from psycopg2 import sql


def flatten(query):
    """The SQL text of `query` without a connection (identifiers double-quoted)."""
    if isinstance(query, str):
        return query
    if isinstance(query, sql.Composed):
        return "".join(flatten(part) for part in query.seq)
    if isinstance(query, sql.Identifier):
        return ".".join('"%s"' % s.replace('"', '""') for s in query.strings)
    if isinstance(query, sql.Literal):
        return repr(query.wrapped)
    if isinstance(query, sql.SQL):
        return query.string
    raise TypeError(query)

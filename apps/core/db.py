"""Server-side prepared statements for the few statements every job runs.

PostgreSQL spends more time planning the submit, claim and finish statements than
executing them (about 0.1 ms each, warm, against 0.02-0.05 ms); three per job, on the
same two cores as everything else (`manage.py bench jobs`). A statement is prepared once
per database session, on first use, and executed by name after that.

Not for a pooler in transaction mode (PgBouncer's default): sessions there are shared and
a prepared statement may be missing on the next transaction's server connection. Set
`DB_PREPARED_STATEMENTS=false` behind one.
"""

import re
import time

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver

_NAMED = re.compile(r"%\((\w+)\)s")
_PREPARED_ATTR = "_switchyard_prepared"


class PreparedStatement:
    """A statement written with psycopg2 placeholders (`%(name)s`, or `%s` in order)."""

    def __init__(self, name: str, sql: str):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a statement name: {name!r}")
        self.name = name
        self.sql = sql
        self.names: list[str] = []
        if _NAMED.search(sql):
            self.body = _NAMED.sub(self._number_named, sql)
        else:
            count = sql.count("%s")
            parts = sql.split("%s")
            self.body = "".join(part + (f"${i + 1}" if i < count else "") for i, part in enumerate(parts))
            self.names = [str(i) for i in range(count)]
        self.execute_sql = f"EXECUTE {name}({', '.join(['%s'] * len(self.names))})"

    def _number_named(self, match: re.Match) -> str:
        if match.group(1) not in self.names:
            self.names.append(match.group(1))
        return f"${self.names.index(match.group(1)) + 1}"

    def _args(self, params) -> list:
        if isinstance(params, dict):
            return [params[name] for name in self.names]
        return list(params)

    def sql_and_args(self, params) -> tuple[str, list]:
        """What to execute now: the named statement (preparing it in this session first), or the plain SQL."""
        if not getattr(settings, "DB_PREPARED_STATEMENTS", True):
            return self.sql, params
        wrapper = connections[DEFAULT_DB_ALIAS]
        wrapper.ensure_connection()
        prepared = wrapper.__dict__.setdefault(_PREPARED_ATTR, set())
        if self.name not in prepared:
            with wrapper.cursor() as cursor:
                cursor.execute(f"PREPARE {self.name} AS {self.body}")
            # PREPARE is not transactional: it stays for the session even if the caller rolls back.
            prepared.add(self.name)
        return self.execute_sql, self._args(params)


@receiver(connection_created)
def _new_session_has_no_prepared_statements(sender, connection, **kwargs):
    connection.__dict__.pop(_PREPARED_ATTR, None)


# --- connections between jobs ------------------------------------------------------------

_USED_AT_ATTR = "_switchyard_used_at"
# A connection that finished a job this recently is known to work: no SELECT 1 before the next.
RECENTLY_USED_S = 1.0


def close_old_connections_between_jobs() -> None:
    """Django's `close_old_connections`, without its health check for a connection used a moment ago.

    With CONN_HEALTH_CHECKS, Django runs `SELECT 1` on the first cursor after every
    close_old_connections: one round trip of the three or four a short job makes. A worker
    running jobs back to back used its connection milliseconds earlier; one that failed,
    erred or idled past RECENTLY_USED_S is checked as before.
    """
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        recent = now - connection.__dict__.get(_USED_AT_ATTR, float("-inf")) < RECENTLY_USED_S
        clean = not connection.errors_occurred
        connection.close_if_unusable_or_obsolete()
        if recent and clean and connection.connection is not None:
            connection.health_check_done = True


def mark_connections_used() -> None:
    """Called when a job's database work ended without error."""
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and not connection.errors_occurred:
            connection.__dict__[_USED_AT_ATTR] = now

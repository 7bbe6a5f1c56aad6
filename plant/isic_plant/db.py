"""PostgreSQL connections and the versioned schema migrations.

Migrations are the files `migrations/NNNN_name.sql`, applied in order, each in its own transaction,
under an advisory lock (several collectors may start at once). `schema_migrations` records each
applied version with the sha256 of its file: an applied migration whose file has changed since is an
error, never silently re-run or skipped.
"""

import contextlib
import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import psycopg
import psycopg.sql

from isic_plant.errors import DatabaseError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SERVER_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"  # the benches' and tests' default server
MIGRATION_LOCK = 0x15C_0001  # pg_advisory_lock key of the migration runner
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def available_migrations() -> List[Migration]:
    """The migrations shipped with this package, in version order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise DatabaseError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise DatabaseError(f"migration versions must run 1, 2, 3 ... without gaps; found {versions}")
    return found


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    """A connection to `dsn`; DatabaseError naming the DSN's host/db when it cannot be made."""
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database {safe_dsn(dsn)!r}: {str(exc).strip()}") from exc


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


def ensure_database(dsn: str) -> bool:
    """Create the DSN's database when it does not exist (connecting to `postgres` on the same server);
    True when it was created. DatabaseError when it is missing and cannot be created."""
    try:
        psycopg.connect(dsn).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise DatabaseError(f"cannot connect to the database {safe_dsn(dsn)!r}: {str(exc).strip()}") from exc
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    name = info.get("dbname")
    if not name:
        raise DatabaseError(f"the DSN {safe_dsn(dsn)!r} names no dbname")
    info["dbname"] = "postgres"
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    except psycopg.Error as exc:
        raise DatabaseError(f"the database {name!r} does not exist and could not be created: "
                            f"{str(exc).strip()} (create it: createdb {name})") from exc
    log.info("created the database %s", name)
    return True


@contextlib.contextmanager
def scratch_database(server_dsn: str, prefix: str) -> Iterator[str]:
    """A new empty database `<prefix>_<random>` on the server of `server_dsn`; its DSN; dropped at exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with connect(server_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_dsn)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with connect(server_dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)))


def migrate(dsn: str) -> List[int]:
    """Create the database if needed and apply the pending migrations; the versions applied now."""
    ensure_database(dsn)
    applied_now = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0]: row[1] for row in conn.execute("SELECT version, sha256 FROM schema_migrations")}
            shipped = available_migrations()
            newest = max((m.version for m in shipped), default=0)
            unknown = sorted(v for v in done if v > newest)
            if unknown:
                raise DatabaseError(f"the database has migrations {unknown} newer than this isic-plant knows "
                                    f"(up to {newest}): upgrade isic-plant")
            for migration in shipped:
                if migration.version in done:
                    if done[migration.version] != migration.sha256:
                        raise DatabaseError(f"migration {migration.version:04d}_{migration.name} was changed after "
                                            "it was applied (sha256 differs): add a new migration instead")
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                                 (migration.version, migration.name, migration.sha256))
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now

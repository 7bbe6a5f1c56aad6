"""The audit chain on a real PostgreSQL: intact after stores and changes, refused UPDATEs, and a tampered
entry, record or deletion named by `isic-plant audit verify`; migrations versioned and checked."""

import json
import uuid

import psycopg
import pytest

from isic_plant import audit, db
from isic_plant.cli import main
from isic_plant.documents import parse
from isic_plant.errors import DatabaseError
from isic_plant.lots import declare_lot
from isic_plant.reference import add_reference
from isic_plant.simulated import SimulatedStation
from isic_plant.store import write_batch


def _fill(dsn: str) -> list:
    station = SimulatedStation("st-1", "L-7", {"cotton": 0.62, "polyester": 0.38})
    docs = [station.result(f"S{i}") for i in range(6)]
    items = [parse("isic/st-1/result", json.dumps(d).encode(), "isic") for d in docs]
    items.append(parse("isic/st-1/result", b"garbage", "isic"))
    with psycopg.connect(dsn) as conn:
        write_batch(conn, items)
        declare_lot(conn, "L-7", {"cotton": 0.62, "polyester": 0.38}, 5.0, "qa")
        add_reference(conn, "L-7", "S1", "ISO 1833-11", {"cotton": 0.61, "polyester": 0.39}, "lab")
    return docs


def test_an_untouched_chain_verifies(plant_db, capsys):
    _fill(plant_db)
    assert main(["audit", "verify", "--db", plant_db, "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] and verdict["entries"] == 9 and verdict["first_broken_seq"] is None


def test_the_log_refuses_update_and_delete(plant_db):
    _fill(plant_db)
    with psycopg.connect(plant_db) as conn, pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE seq = 3")


def _as_dba(dsn: str, sql: str) -> None:
    """What someone with the database owner's rights could do: switch the guard off, change, switch it on."""
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
        conn.execute(sql)
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change")


@pytest.mark.parametrize("sql, seq, words", [
    ("UPDATE audit_log SET doc_sha256 = repeat('a', 64) WHERE seq = 4", 4, "altered"),
    ("DELETE FROM audit_log WHERE seq = 5", 5, "missing"),
    ("UPDATE results SET doc = jsonb_set(doc, '{composition,cotton}', '0.99') WHERE sequence = 2", None, "altered"),
    ("DELETE FROM reference_results", 9, "deleted"),
])
def test_tampering_is_found_and_the_first_broken_link_named(plant_db, capsys, sql, seq, words):
    _fill(plant_db)
    if seq is None:  # the entry of the altered result (a batch's results are entered in message_id order)
        with psycopg.connect(plant_db) as conn:
            seq = conn.execute("SELECT a.seq FROM audit_log a JOIN results r ON a.kind = 'result'"
                               " AND a.ref = r.message_id WHERE r.sequence = 2").fetchone()[0]
    if sql.startswith("UPDATE results") or sql.startswith("DELETE FROM reference"):
        with psycopg.connect(plant_db) as conn:
            conn.execute(sql)
    else:
        _as_dba(plant_db, sql)
    assert main(["audit", "verify", "--db", plant_db]) == 2
    out = capsys.readouterr().out
    assert f"BROKEN at entry {seq}" in out and words in out


def test_migrations_are_versioned_and_a_changed_one_is_refused(plant_db, capsys):
    assert db.migrate(plant_db) == []  # the fixture applied them already
    assert main(["migrate", "--db", plant_db]) == 0
    assert "up to date" in capsys.readouterr().out
    with psycopg.connect(plant_db) as conn:
        versions = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert versions[0] == (1, "historian")
        conn.execute("UPDATE schema_migrations SET sha256 = 'x' WHERE version = 1")
    with pytest.raises(DatabaseError, match="changed after it was applied"):
        db.migrate(plant_db)


def test_an_unreachable_database_is_one_clear_line(capsys):
    code = main(["audit", "verify", "--db", "host=127.0.0.1 port=1 dbname=nothing user=postgres connect_timeout=2"])
    assert code == 69
    err = capsys.readouterr().err
    assert err.startswith("isic-plant: cannot connect to the database") and "port=1" in err


def test_canonical_hash_ignores_key_order():
    assert audit.document_sha256({"b": 1, "a": [1, 2]}) == audit.document_sha256({"a": [1, 2], "b": 1})


def test_a_missing_database_is_created_and_migrated():
    name = f"isic_plant_test_new_{uuid.uuid4().hex[:8]}"
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    try:
        assert db.migrate(dsn) == [1]
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 1
    finally:
        with psycopg.connect(db.SERVER_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

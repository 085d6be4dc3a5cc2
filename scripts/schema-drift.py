#!/usr/bin/env python3
"""Fails when schema.sql and the migrations disagree: both are applied to empty SQLite databases and
every table's columns (name, type, NOT NULL, default, key, in order) and every index (name, table,
uniqueness, columns, condition) are compared. Run by `make lint`."""
import glob
import os
import re
import sqlite3
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(scripts):
    db = sqlite3.connect(":memory:")
    for path in scripts:
        with open(path, encoding="utf-8") as f:
            db.executescript(f.read())
    return db


def shape(db):
    out = {}
    tables = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'd1_%' AND name NOT LIKE '_cf_%' ORDER BY name")]
    for t in tables:
        out[f"table {t}"] = [tuple(r[1:]) for r in db.execute(f"PRAGMA table_info({t})")]
    for name, table, sql in db.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"):
        out[f"index {name}"] = (table, re.sub(r"\s+", " ", sql).strip())
    return out


def main():
    migrations = sorted(glob.glob(os.path.join(ROOT, "migrations", "*.sql")))
    if not migrations:
        print("schema-drift: no migrations found", file=sys.stderr)
        return 1
    from_migrations = shape(build(migrations))
    from_schema = shape(build([os.path.join(ROOT, "schema.sql")]))
    problems = []
    for key in sorted(set(from_migrations) | set(from_schema)):
        a, b = from_migrations.get(key), from_schema.get(key)
        if a != b:
            problems.append(f"{key}:\n  migrations: {a}\n  schema.sql: {b}")
    if problems:
        print("schema-drift: schema.sql and migrations/ differ:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(f"schema-drift: schema.sql matches {len(migrations)} migrations ({len(from_schema)} tables and indexes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

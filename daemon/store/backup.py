"""A copy of the database before a migration changes it (an upgrade that goes wrong can
be undone by putting the copy back while textback is stopped).

The copy is taken with SQLite's online backup API (consistent even with a WAL), next to
the database, named after the schema version it holds: `textback.db.schema7.bak`. The
newest `KEEP` copies are kept; older ones are removed.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

#: How many backups (one per upgrade that migrated) are kept.
KEEP = 3

_NAME = re.compile(r"\.schema(\d+)\.bak$")


def backup_path(db: Path, version: int) -> Path:
    """Where the copy of `db` at schema `version` goes."""
    return db.with_name(f"{db.name}.schema{version}.bak")


def backups(db: Path) -> list[Path]:
    """The backups of `db`, oldest schema first."""
    found = []
    for p in db.parent.glob(f"{db.name}.schema*.bak"):
        m = _NAME.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def take_backup(db: Path, version: int, *, keep: int = KEEP) -> Path:
    """Copy `db` (at schema `version`) with the backup API; keep the newest `keep` copies.
    Raises sqlite3.Error or OSError when the copy cannot be made."""
    dest = backup_path(db, version)
    tmp = dest.with_name(dest.name + ".part")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(str(tmp))
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()
    tmp.chmod(db.stat().st_mode & 0o777)
    tmp.replace(dest)
    for old in backups(db)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return dest

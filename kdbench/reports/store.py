"""Results store: one SQLite file in the runs folder. Only the driver process writes it."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError

STORE_NAME = "results.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kdbench_version TEXT, git_commit TEXT, python TEXT, torch TEXT, torchvision TEXT, cuda TEXT,
    device TEXT, hostname TEXT, platform TEXT, created REAL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,              -- the config hash: the same config is the same job
    kind TEXT NOT NULL,               -- 'teacher' | 'student'
    scene TEXT NOT NULL,
    method TEXT NOT NULL,             -- 'baseline' for teachers
    arch TEXT NOT NULL,
    teacher_arch TEXT,
    teacher_id TEXT,
    seed INTEGER NOT NULL,
    preset TEXT,
    params TEXT,                      -- JSON: the method's resolved hyperparameters
    config TEXT NOT NULL,             -- JSON: the whole TrainConfig
    status TEXT NOT NULL,             -- 'pending' | 'running' | 'done' | 'failed'
    error TEXT,
    run_dir TEXT,
    checkpoint TEXT,
    epochs_done INTEGER DEFAULT 0,
    train_seconds REAL,
    eval_seconds REAL,
    env_id INTEGER REFERENCES environments(id),
    created REAL, updated REAL
);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    arch TEXT NOT NULL, backend TEXT NOT NULL, device TEXT NOT NULL,
    batch INTEGER, crop INTEGER,
    params INTEGER, size_mb REAL, file_mb REAL, gflops REAL,
    latency_median_ms REAL, latency_p90_ms REAL, runs INTEGER,
    estimated INTEGER DEFAULT 0, note TEXT, source TEXT, created REAL
);
"""

JOB_COLUMNS = ("id", "kind", "scene", "method", "arch", "teacher_arch", "teacher_id", "seed", "preset", "params",
               "config", "status", "error", "run_dir", "checkpoint", "epochs_done", "train_seconds",
               "eval_seconds", "env_id", "created", "updated")
PROFILE_COLUMNS = ("arch", "backend", "device", "batch", "crop", "params", "size_mb", "file_mb", "gflops",
                   "latency_median_ms", "latency_p90_ms", "runs", "estimated", "note", "source", "created")


class ResultsStore:
    """Transactional access to `<runs_dir>/results.sqlite`."""

    def __init__(self, runs_dir: str | os.PathLike, create: bool = True):
        self.runs_dir = Path(runs_dir)
        self.path = self.runs_dir / STORE_NAME
        if not create and not self.path.is_file():
            raise KdbenchError(f"no results store at {self.path}: run `kdbench run --runs-dir {self.runs_dir}` first")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: a write lands whole or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # environments -------------------------------------------------------------------------------
    def add_environment(self, env: dict[str, Any]) -> int:
        """Record an environment (versions, device, host) and return its id; identical ones are reused."""
        cols = ("kdbench_version", "git_commit", "python", "torch", "torchvision", "cuda", "device", "hostname",
                "platform")
        values = tuple(env.get(c) for c in cols)
        with self.transaction() as c:
            row = c.execute(f"SELECT id FROM environments WHERE {' AND '.join(f'{k} IS ?' for k in cols)}",
                            values).fetchone()
            if row:
                return int(row[0])
            cur = c.execute(f"INSERT INTO environments ({', '.join(cols)}, created) VALUES "
                            f"({', '.join('?' * len(cols))}, ?)", values + (time.time(),))
            return int(cur.lastrowid)

    # jobs ---------------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def upsert_job(self, job: dict[str, Any]) -> None:
        """Insert a job row, or update the given columns of an existing one (one transaction)."""
        job = dict(job)
        now = time.time()
        job["updated"] = now
        for key in ("params", "config"):
            if key in job and not isinstance(job[key], str):
                job[key] = json.dumps(job[key], sort_keys=True, default=str)
        with self.transaction() as c:
            exists = c.execute("SELECT 1 FROM jobs WHERE id = ?", (job["id"],)).fetchone()
            if exists:
                sets = [k for k in job if k != "id"]
                c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                          tuple(job[k] for k in sets) + (job["id"],))
            else:
                job.setdefault("created", now)
                cols = list(job)
                c.execute(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          tuple(job[k] for k in cols))

    def finish_job(self, job_id: str, metrics: dict[str, float], **fields: Any) -> None:
        """Mark a job done and write its metrics, all in one transaction."""
        fields = {**fields, "status": "done", "error": None, "updated": time.time()}
        with self.transaction() as c:
            c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                      tuple(fields.values()) + (job_id,))
            c.execute("DELETE FROM metrics WHERE job_id = ?", (job_id,))
            c.executemany("INSERT INTO metrics (job_id, name, value) VALUES (?, ?, ?)",
                          [(job_id, k, float(v)) for k, v in metrics.items()])

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM jobs" + (" WHERE status = ?" if status else "") + " ORDER BY created"
        return [dict(r) for r in self.conn.execute(q, (status,) if status else ())]

    def metrics(self, job_id: str) -> dict[str, float]:
        return {r["name"]: r["value"] for r in self.conn.execute(
            "SELECT name, value FROM metrics WHERE job_id = ?", (job_id,))}

    # profiles -----------------------------------------------------------------------------------
    def add_profiles(self, rows: list[dict[str, Any]]) -> int:
        """Append efficiency measurements (one row per arch x backend x device); returns how many."""
        with self.transaction() as c:
            for r in rows:
                r = {k: r.get(k) for k in PROFILE_COLUMNS}
                r["created"] = r["created"] or time.time()
                r["estimated"] = int(bool(r["estimated"]))
                c.execute(f"INSERT INTO profiles ({', '.join(PROFILE_COLUMNS)}) VALUES "
                          f"({', '.join('?' * len(PROFILE_COLUMNS))})", tuple(r[k] for k in PROFILE_COLUMNS))
        return len(rows)

    def profiles(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM profiles ORDER BY id")]

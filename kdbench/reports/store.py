"""Results store: one SQLite file in the runs folder. Only the driver process writes it.

Guarantees:
- Readers (`ResultsStore(runs_dir, create=False)`: `kdbench runs`, `report`, exports) open the file
  read-only (no WAL switch, no CREATE), so a store in a read-only folder can be listed and reported.
- A damaged file (random bytes, truncated) is a one-line KdbenchError naming the file and the recovery
  (`kdbench run --rebuild-store`, which rebuilds the store from the run folders), never a traceback.
- A finished result is never lost: a later failure of the same job is recorded in `last_error` and the
  row stays 'done'; a job that replaces an older result of the same method, scene, seed and preset (new
  data or configuration) marks the old row 'superseded' (kept, never deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kdbench.errors import KdbenchError

STORE_NAME = "results.sqlite"
SCHEMA_VERSION = 2
STATUSES = ("pending", "running", "done", "failed", "superseded")
FINISHED = ("done", "superseded")  # a finished result: never downgraded, never deleted

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kdbench_version TEXT, git_commit TEXT, python TEXT, torch TEXT, torchvision TEXT, cuda TEXT,
    device TEXT, hostname TEXT, platform TEXT, created REAL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,              -- the config hash: the same config (data included) is the same job
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
    status TEXT NOT NULL,             -- 'pending' | 'running' | 'done' | 'failed' | 'superseded'
    error TEXT,
    run_dir TEXT,
    checkpoint TEXT,
    epochs_done INTEGER DEFAULT 0,
    train_seconds REAL,
    eval_seconds REAL,
    env_id INTEGER REFERENCES environments(id),
    created REAL, updated REAL,
    data TEXT,                        -- fingerprint of the scene's data (labels and images)
    ckpt_bytes INTEGER,               -- size and SHA-256 of the checkpoint when it finished: checked on reuse
    ckpt_sha256 TEXT,
    last_error TEXT,                  -- the latest failed rerun of a finished job (its result is kept)
    superseded_by TEXT,               -- the job whose newer result replaced this one
    eval_split TEXT DEFAULT 'test',   -- what the job was scored on: 'test', or 'val' (tuning; never on a leaderboard)
    retries INTEGER                   -- Ray: how many times the job's task was run again after its worker died
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
# Columns added after schema version 1: an older store gains them when a writer opens it.
_ADDED_JOB_COLUMNS = {"data": "TEXT", "ckpt_bytes": "INTEGER", "ckpt_sha256": "TEXT", "last_error": "TEXT",
                      "superseded_by": "TEXT", "eval_split": "TEXT DEFAULT 'test'", "retries": "INTEGER"}

JOB_COLUMNS = ("id", "kind", "scene", "method", "arch", "teacher_arch", "teacher_id", "seed", "preset", "params",
               "config", "status", "error", "run_dir", "checkpoint", "epochs_done", "train_seconds",
               "eval_seconds", "env_id", "created", "updated", *_ADDED_JOB_COLUMNS)
PROFILE_COLUMNS = ("arch", "backend", "device", "batch", "crop", "params", "size_mb", "file_mb", "gflops",
                   "latency_median_ms", "latency_p90_ms", "runs", "estimated", "note", "source", "created")
# Jobs that give the same leaderboard cell (method, scene, seed, preset, hyperparameters): a newer finished
# one supersedes an older one (new data, epochs, teacher...).
# A val-scored job never supersedes a test-scored one, nor the reverse; the teacher's seed of a crossed design
# (kdbench run --teacher-seeds) lives in the config (NULL: the student's own).
_SAME_CELL = ("kind", "scene", "method", "arch", "teacher_arch", "seed", "preset", "params", "eval_split",
              "CASE WHEN json_valid(config) THEN json_extract(config, '$.teacher_seed') END")


def damaged_store_error(path: Path, detail: str) -> KdbenchError:
    """The one-line error for a store file SQLite cannot read."""
    return KdbenchError(f"results store {path} is damaged ({detail}): rebuild it from the run folders with "
                        f"`kdbench run --rebuild-store --runs-dir {path.parent}` (the damaged file is kept beside it), "
                        "or move it aside and rerun")


class StoreNotWritable(KdbenchError):
    """The store cannot be written here (read-only folder or file system): a run with nothing to do still works."""


def _operational_error(path: Path, exc: sqlite3.Error, timeout_s: float) -> KdbenchError:
    """One true line for an SQLite error of an open or a write: locked, read-only, full, or changed layout."""
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return KdbenchError(f"results store {path} is locked by another process (waited {timeout_s:.0f} s): another "
                            "kdbench (or an SQLite tool) holds a write transaction; let it finish or stop it, then "
                            "rerun")
    if "disk is full" in low or "disk full" in low:
        from kdbench.fileio import disk_full_error

        return disk_full_error(path, text)
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return StoreNotWritable(f"cannot write the results store {path} ({text}): the runs folder and the file "
                                "must be writable (read-only commands such as `kdbench report` work without)")
    if "no such column" in low or "no such table" in low or "has no column" in low:
        return KdbenchError(f"results store {path} does not have the layout kdbench writes ({text}): a table or "
                            f"column was renamed or dropped; rebuild it with `kdbench run --rebuild-store "
                            f"--runs-dir {path.parent}` (the old file is kept beside it)")
    if isinstance(exc, sqlite3.IntegrityError):
        return KdbenchError(f"results store {path} refused a write ({text}): a trigger or constraint that kdbench "
                            f"did not create rejects it; drop it, or rebuild the store with `kdbench run "
                            f"--rebuild-store --runs-dir {path.parent}`")
    return KdbenchError(f"cannot use the results store {path} ({text})")


def file_sha256(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return os.path.getsize(path), h.hexdigest()


def check_runs_dir(runs_dir: str | os.PathLike) -> None:
    """A one-line error when the runs folder names a file."""
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise KdbenchError(f"--runs-dir {runs_dir} is a file, not a folder: pass the folder that holds (or will "
                           f"hold) {STORE_NAME} and the run folders")


def check_store(runs_dir: str | os.PathLike) -> None:
    """Raise the one-line error if the store of `runs_dir` exists and is damaged (reads it only)."""
    path = Path(runs_dir) / STORE_NAME
    if path.is_file() and path.stat().st_size > 0:
        ResultsStore(runs_dir, create=False, tables=False).close()


class ResultsStore:
    """Transactional access to `<runs_dir>/results.sqlite`.

    `create=False` opens an existing store read-only (`tables=False`: only check that it is not damaged).
    """

    TIMEOUT_S = 30.0  # how long a writer waits for another one's transaction

    def __init__(self, runs_dir: str | os.PathLike, create: bool = True, tables: bool = True):
        self.runs_dir = Path(runs_dir)
        self.path = self.runs_dir / STORE_NAME
        self.readonly = not create
        check_runs_dir(self.runs_dir)
        if self.path.is_dir():
            raise KdbenchError(f"results store {self.path} is a folder, not a file: move it aside (kdbench then "
                               f"creates a new store; `kdbench run --rebuild-store --runs-dir {self.runs_dir}` "
                               "refills it from the run folders)")
        if self.readonly:
            if not self.path.is_file():
                raise KdbenchError(f"no results store at {self.path}: run `kdbench run --runs-dir {self.runs_dir}` "
                                   "first")
            self.conn = self._connect_readonly()
            self._check()
            if tables:
                self._check_lost_tables()
            if tables and self._missing_tables():
                self.conn.close()
                raise KdbenchError(f"results store {self.path} holds no kdbench tables (empty, or not written by "
                                   f"kdbench): run `kdbench run --runs-dir {self.runs_dir}` to fill it")
            if tables:
                self._check_layout()
        else:
            try:
                self.runs_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KdbenchError(f"cannot create the runs folder {self.runs_dir} ({exc.strerror or exc}): pass "
                                   "a writable --runs-dir") from None
            existed = self.path.is_file() and self.path.stat().st_size > 0
            try:
                self.conn = sqlite3.connect(self.path, timeout=self.TIMEOUT_S, isolation_level=None)
            except sqlite3.Error as exc:
                raise _operational_error(self.path, exc, self.TIMEOUT_S) from None
            if existed:
                self._check()
                self._check_lost_tables()
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.executescript(_SCHEMA)
                self._migrate()
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._check_layout()
            except sqlite3.OperationalError as exc:
                self.conn.close()
                raise _operational_error(self.path, exc, self.TIMEOUT_S) from None
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                raise damaged_store_error(self.path, str(exc)) from None
        self.conn.row_factory = sqlite3.Row

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # A WAL store in a folder we cannot write: SQLite cannot create its -shm file. Nothing can be
            # writing it either, so read it as an immutable file.
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
            return conn
        except sqlite3.DatabaseError as exc:
            raise damaged_store_error(self.path, str(exc)) from None

    def _check(self) -> None:
        """A quick integrity check (milliseconds for a results store): damage is an error, not a traceback."""
        try:
            rows = self.conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.OperationalError as exc:
            self.conn.close()
            raise KdbenchError(f"cannot read the results store {self.path} ({exc})") from None
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise damaged_store_error(self.path, str(exc)) from None
        first = rows[0][0] if rows else "ok"
        if first != "ok":
            self.conn.close()
            raise damaged_store_error(self.path, str(first))

    def _check_layout(self) -> None:
        """Every column kdbench reads is there (a renamed one is one line, not an error inside a query)."""
        need = {"jobs": [c for c in JOB_COLUMNS if c not in _ADDED_JOB_COLUMNS], "metrics": ["job_id", "name", "value"]}
        for table, cols in need.items():
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in cols if c not in have]
            if missing:
                self.conn.close()
                raise _operational_error(self.path, sqlite3.OperationalError(
                    f"no such column: {table}.{missing[0]}"), self.TIMEOUT_S)

    def _check_lost_tables(self) -> None:
        """A kdbench store that lost a table is an error naming --rebuild-store: a rerun would reuse every job."""
        missing = self._missing_tables()
        names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if missing and {"meta", "jobs"} <= names:  # kdbench made it whole (meta, jobs, metrics, profiles)
            self.conn.close()
            raise KdbenchError(f"results store {self.path} lacks its {', '.join(missing)} table(s) (dropped or "
                               "damaged): rebuild it from the run folders with `kdbench run --rebuild-store "
                               f"--runs-dir {self.runs_dir}` (the old file is kept beside it)")

    def _missing_tables(self) -> list[str]:
        names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return [t for t in ("jobs", "metrics", "profiles") if t not in names]

    def _migrate(self) -> None:
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(jobs)")}
        for col, decl in _ADDED_JOB_COLUMNS.items():
            if col not in have:
                self.conn.execute(f"ALTER TABLE jobs ADD COLUMN {col} {decl}")
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: a write lands whole or not at all."""
        if self.readonly:
            raise KdbenchError(f"results store {self.path} was opened read-only")
        with self._errors():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Damage found after opening (a later page) is a one-line error too."""
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.IntegrityError) as exc:
            raise _operational_error(self.path, exc, self.TIMEOUT_S) from None
        except sqlite3.DatabaseError as exc:
            raise damaged_store_error(self.path, str(exc)) from None

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._errors():
            return self.conn.execute(sql, args).fetchall()

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
        """The row of a job, or None."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return dict(rows[0]) if rows else None

    def upsert_job(self, job: dict[str, Any]) -> None:
        """Insert a job row, or update the given columns of an existing one (one transaction).

        A finished row keeps its status and result: 'pending', 'running' or 'failed' never overwrite them
        (a failure's message goes to `last_error`).
        """
        job = dict(job)
        now = time.time()
        job["updated"] = now
        if isinstance(job.get("config"), dict):  # every writer's row says what it was scored on
            job.setdefault("eval_split", job["config"].get("eval_split") or "test")
        for key in ("params", "config"):
            if key in job and not isinstance(job[key], str):
                job[key] = json.dumps(job[key], sort_keys=True, default=str)
        with self.transaction() as c:
            row = c.execute("SELECT status FROM jobs WHERE id = ?", (job["id"],)).fetchone()
            if row:
                if row[0] in FINISHED and job.get("status") not in (None, *FINISHED):
                    if job.pop("status") == "failed" and "error" in job:
                        job["last_error"] = job["error"]
                    job.pop("error", None)
                sets = [k for k in job if k != "id"]
                c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                          tuple(job[k] for k in sets) + (job["id"],))
            else:
                job.setdefault("created", now)
                cols = list(job)
                c.execute(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          tuple(job[k] for k in cols))

    def record_failure(self, job_id: str, error: str, **fields: Any) -> bool:
        """Record a failed attempt; returns True when the job's earlier finished result was kept."""
        with self.transaction() as c:
            row = c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            kept = bool(row) and row[0] in FINISHED
            fields = {**fields, "updated": time.time(), **(
                {"last_error": error} if kept else {"status": "failed", "error": error})}
            c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                      tuple(fields.values()) + (job_id,))
        return kept

    def finish_job(self, job_id: str, metrics: dict[str, float], **fields: Any) -> list[str]:
        """Mark a job done and write its metrics, all in one transaction; returns the ids it superseded."""
        fields = {**fields, "status": "done", "error": None, "last_error": None, "superseded_by": None,
                  "updated": time.time()}
        with self.transaction() as c:
            c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                      tuple(fields.values()) + (job_id,))
            c.execute("DELETE FROM metrics WHERE job_id = ?", (job_id,))
            c.executemany("INSERT INTO metrics (job_id, name, value) VALUES (?, ?, ?)",
                          [(job_id, k, float(v)) for k, v in metrics.items()])
            return self._supersede_others(c, job_id)

    def reinstate(self, job_id: str) -> list[str]:
        """A superseded result that is current again (the data went back) becomes 'done'; returns what it supersedes."""
        with self.transaction() as c:
            c.execute("UPDATE jobs SET status = 'done', superseded_by = NULL, updated = ? WHERE id = ? "
                      "AND status = 'superseded'", (time.time(), job_id))
            return self._supersede_others(c, job_id)

    @staticmethod
    def _supersede_others(c: sqlite3.Connection, job_id: str) -> list[str]:
        row = c.execute(f"SELECT {', '.join(_SAME_CELL)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return []
        where = " AND ".join(f"{k} IS ?" for k in _SAME_CELL)
        ids = [r[0] for r in c.execute(f"SELECT id FROM jobs WHERE id != ? AND status = 'done' AND {where}",
                                       (job_id, *row))]
        c.executemany("UPDATE jobs SET status = 'superseded', superseded_by = ?, updated = ? WHERE id = ?",
                      [(job_id, time.time(), i) for i in ids])
        return ids

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Update some columns of a job without touching its status."""
        fields.pop("status", None)
        with self.transaction() as c:
            c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                      tuple(fields.values()) + (job_id,))

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Job rows (optionally of one status) in the order they were first planned."""
        q = "SELECT * FROM jobs" + (" WHERE status = ?" if status else "") + " ORDER BY created"
        return [dict(r) for r in self._query(q, (status,) if status else ())]

    def metrics(self, job_id: str) -> dict[str, float]:
        """The metrics of a job (empty when it has none)."""
        return {r["name"]: r["value"] for r in self._query("SELECT name, value FROM metrics WHERE job_id = ?",
                                                           (job_id,))}

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
        """Every profile row in the order it was added."""
        return [dict(r) for r in self._query("SELECT * FROM profiles ORDER BY id")]


# rebuilding from the run folders ---------------------------------------------------------------------------
def rebuild_store(runs_dir: str | os.PathLike) -> tuple[Path | None, int]:
    """Move a damaged store aside and rebuild it from the run folders' config.json and metrics.json.

    Every finished folder under `runs_dir` is found (run and train jobs); variant labels come from the
    configs; older results of a leaderboard cell come back superseded by the newest (by metrics.json's time).

    Returns (where the old file went, or None if there was none; how many finished jobs were recovered).
    Profile rows lived only in the store: re-import their JSON files (`kdbench import`).
    """
    runs_dir = Path(runs_dir)
    check_runs_dir(runs_dir)
    path = runs_dir / STORE_NAME
    aside = None
    if path.exists():
        aside = path.with_name(f"{STORE_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        for suffix in ("-wal", "-shm", "-journal"):
            side = path.with_name(STORE_NAME + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
    found = []
    # Run folders sit at <scene>/<job> (kdbench run) and train/<scene>/<job> (kdbench train): search them all.
    for cfg_file in sorted(runs_dir.rglob("config.json")):
        found.extend(_recovered_job(runs_dir, cfg_file))
    found.sort(key=lambda item: item[0].pop("finished"))  # oldest first: the newest of a cell stays done
    with ResultsStore(runs_dir) as store:
        for row, metrics in found:
            store.upsert_job({**row, "status": "pending"})
            store.finish_job(row["id"], metrics, checkpoint=row["checkpoint"], epochs_done=row["epochs_done"])
    return aside, len(found)


def _recovered_job(runs_dir: Path, cfg_file: Path) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """The row and metrics of one finished run folder ([] when it is unfinished or not a kdbench job)."""
    from kdbench.config import TrainConfig

    folder = cfg_file.parent
    metrics_file = folder / "metrics.json"
    try:
        cfg_dict = json.loads(cfg_file.read_text(encoding="utf-8"))
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        cfg = TrainConfig.from_dict(cfg_dict)
    except (OSError, ValueError, TypeError, KdbenchError):
        return []
    if cfg.hash() != cfg_dict.get("hash") or not folder.name.endswith(cfg.hash()) or not isinstance(metrics, dict):
        return []
    ckpt = folder / "checkpoint.pt"
    run_dir = folder.relative_to(runs_dir).as_posix()
    config = cfg.to_dict()
    if run_dir.startswith("train/"):  # as `kdbench train` records it
        config["origin"] = "train"
    # The method column is the leaderboard row: a variant's label (recorded in its config), else the method.
    row = {"id": cfg.hash(), "kind": cfg.role, "scene": cfg.scene, "method": cfg.method_label or cfg.method,
           "arch": cfg.arch, "teacher_arch": cfg.teacher_arch, "teacher_id": cfg.teacher_hash, "seed": cfg.seed,
           "preset": cfg.preset, "params": cfg.method_params, "config": config, "run_dir": run_dir, "data": cfg.data,
           "checkpoint": f"{run_dir}/checkpoint.pt" if ckpt.is_file() else None, "epochs_done": cfg.epochs,
           "finished": metrics_file.stat().st_mtime}
    return [(row, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})]

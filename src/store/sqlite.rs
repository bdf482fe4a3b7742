//! The embedded store: one SQLite database file (`rusqlite`, SQLite built in), owned by one
//! server process at a time (an exclusive lock, taken at open: a second server on the same
//! file is refused at start, so no operation ever waits for another process's lock).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{CheckpointRecord, Store, StoreError, StoredSession};

pub struct SqliteStore {
    /// One connection; SQLite serialises writers anyway, and every call is short.
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the database at `path`, takes its
    /// exclusive lock, and makes the schema. Blocking.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Made private first: SQLite gives its -wal and -shm files the database file's mode,
        // and checkpoints are tenants' data.
        if path != Path::new(":memory:") {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Malformed(format!("{}: {e}", path.display())))?;
        }
        let conn = Connection::open(path).map_err(open_error)?;
        // not polling: rusqlite arms a 5 s busy handler by default (sleep and retry); none
        // here (the exclusive lock makes waiting pointless).
        conn.busy_timeout(std::time::Duration::ZERO)
            .map_err(open_error)?;
        // No busy handler: SQLite's waits on a lock are sleep-and-retry loops. The exclusive
        // lock below makes this process the only user of the file instead.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS checkpoints (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 session_id TEXT,
                 created_at REAL NOT NULL,
                 size INTEGER NOT NULL,
                 meta TEXT NOT NULL,
                 data BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS checkpoints_by_tenant ON checkpoints (tenant, created_at);
             CREATE TABLE IF NOT EXISTS sessions (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 created_at REAL NOT NULL,
                 saved_at REAL,
                 state BLOB
             );
             BEGIN EXCLUSIVE; COMMIT;",
        )
        .map_err(open_error)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sync::lock_unpoisoned(&self.conn)
    }
}

/// What `meta` holds: the record's lists.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    saved: Vec<String>,
    skipped: Vec<crate::session::NotSaved>,
    /// Absent from records written before packages were recorded.
    #[serde(default)]
    packages: Vec<String>,
}

fn record_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<(CheckpointRecord, String)> {
    Ok((
        CheckpointRecord {
            id: row.get(0)?,
            tenant: row.get(1)?,
            session_id: row.get(2)?,
            created_at: row.get(3)?,
            size: row.get::<_, i64>(4)?.max(0) as u64,
            saved: Vec::new(),
            skipped: Vec::new(),
            packages: Vec::new(),
        },
        row.get(5)?,
    ))
}

fn with_meta(
    (mut record, meta): (CheckpointRecord, String),
) -> Result<CheckpointRecord, StoreError> {
    let meta: Meta =
        serde_json::from_str(&meta).map_err(|e| StoreError::Malformed(e.to_string()))?;
    record.saved = meta.saved;
    record.skipped = meta.skipped;
    record.packages = meta.packages;
    Ok(record)
}

impl SqliteStore {
    fn insert(conn: &Connection, record: &CheckpointRecord, data: &[u8]) -> Result<(), StoreError> {
        let meta = serde_json::to_string(&Meta {
            saved: record.saved.clone(),
            skipped: record.skipped.clone(),
            packages: record.packages.clone(),
        })
        .map_err(|e| StoreError::Malformed(e.to_string()))?;
        conn.execute(
            "INSERT INTO checkpoints (id, tenant, session_id, created_at, size, meta, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record.id,
                record.tenant,
                record.session_id,
                record.created_at,
                i64::try_from(record.size).unwrap_or(i64::MAX),
                meta,
                data
            ],
        )?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn put_checkpoint(&self, record: &CheckpointRecord, data: &[u8]) -> Result<(), StoreError> {
        Self::insert(&self.conn(), record, data)
    }

    fn put_checkpoint_within(
        &self,
        record: &CheckpointRecord,
        data: &[u8],
        limit: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        // One connection behind one lock: nothing else runs between the sum and the insert.
        let conn = self.conn();
        let held: i64 = conn.query_row(
            "SELECT COALESCE(SUM(size), 0) FROM checkpoints WHERE tenant = ?1",
            params![record.tenant],
            |row| row.get(0),
        )?;
        let held = held.max(0) as u64;
        if held.saturating_add(record.size) > limit {
            return Ok(Err(held));
        }
        Self::insert(&conn, record, data)?;
        Ok(Ok(()))
    }

    fn get_checkpoint(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(CheckpointRecord, Vec<u8>)>, StoreError> {
        let found = self
            .conn()
            .query_row(
                "SELECT id, tenant, session_id, created_at, size, meta, data
                 FROM checkpoints WHERE id = ?1 AND tenant = ?2",
                params![id, tenant],
                |row| Ok((record_of(row)?, row.get::<_, Vec<u8>>(6)?)),
            )
            .optional()?;
        match found {
            Some((record, data)) => Ok(Some((with_meta(record)?, data))),
            None => Ok(None),
        }
    }

    fn list_checkpoints(
        &self,
        tenant: &str,
        session_id: Option<&str>,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, tenant, session_id, created_at, size, meta FROM checkpoints
             WHERE tenant = ?1 AND (?2 IS NULL OR session_id = ?2) ORDER BY created_at, id",
        )?;
        let rows = statement.query_map(params![tenant, session_id], record_of)?;
        let mut records = Vec::new();
        for row in rows {
            records.push(with_meta(row?)?);
        }
        Ok(records)
    }

    fn delete_checkpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let deleted = self.conn().execute(
            "DELETE FROM checkpoints WHERE id = ?1 AND tenant = ?2",
            params![id, tenant],
        )?;
        Ok(deleted > 0)
    }

    fn put_session(&self, id: &str, tenant: &str, created_at: f64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO sessions (id, tenant, created_at) VALUES (?1, ?2, ?3)",
            params![id, tenant, created_at],
        )?;
        Ok(())
    }

    fn save_session_state(&self, id: &str, saved_at: f64, state: &[u8]) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sessions SET saved_at = ?2, state = ?3 WHERE id = ?1",
            params![id, saved_at, state],
        )?;
        Ok(())
    }

    fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sessions WHERE id = ?1", params![id])?;
        Ok(())
    }

    fn list_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, tenant, created_at, saved_at, state FROM sessions ORDER BY created_at, id",
        )?;
        let rows = statement.query_map([], |row| {
            let saved_at: Option<f64> = row.get(3)?;
            let state: Option<Vec<u8>> = row.get(4)?;
            Ok(StoredSession {
                id: row.get(0)?,
                tenant: row.get(1)?,
                created_at: row.get(2)?,
                state: saved_at.zip(state),
            })
        })?;
        // A row that cannot be read is skipped (and said), not a reason to bring none back.
        let mut sessions = Vec::new();
        for row in rows {
            match row {
                Ok(session) => sessions.push(session),
                Err(e) => {
                    tracing::warn!(error = %e, "a stored session record is unreadable; skipped")
                }
            }
        }
        Ok(sessions)
    }

    fn tenant_bytes(&self, tenant: &str) -> Result<u64, StoreError> {
        let total: i64 = self.conn().query_row(
            "SELECT COALESCE(SUM(size), 0) FROM checkpoints WHERE tenant = ?1",
            params![tenant],
            |row| row.get(0),
        )?;
        Ok(total.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tenant: &str, session: Option<&str>, at: f64) -> CheckpointRecord {
        CheckpointRecord {
            id: id.into(),
            tenant: tenant.into(),
            session_id: session.map(str::to_string),
            created_at: at,
            size: 3,
            saved: vec!["x".into()],
            skipped: vec![crate::session::NotSaved {
                name: "f".into(),
                reason: "TypeError: no".into(),
            }],
            packages: vec!["pkg==1.0".into()],
        }
    }

    #[test]
    fn checkpoints_are_kept_per_tenant_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite3");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .put_checkpoint(&record("c1", "alice", Some("s1"), 1.0), b"abc")
                .unwrap();
            store
                .put_checkpoint(&record("c2", "alice", None, 2.0), b"def")
                .unwrap();
            store
                .put_checkpoint(&record("c3", "bob", Some("s2"), 3.0), b"ghi")
                .unwrap();
            assert!(
                store.get_checkpoint("bob", "c1").unwrap().is_none(),
                "not bob's"
            );
            assert_eq!(store.tenant_bytes("alice").unwrap(), 6);
            assert!(store.delete_checkpoint("alice", "c2").unwrap());
            assert!(
                !store.delete_checkpoint("alice", "c3").unwrap(),
                "not alice's"
            );
        }
        let store = SqliteStore::open(&path).unwrap();
        let (found, data) = store.get_checkpoint("alice", "c1").unwrap().unwrap();
        assert_eq!(found, record("c1", "alice", Some("s1"), 1.0));
        assert_eq!(data, b"abc");
        let ids: Vec<String> = store
            .list_checkpoints("alice", None)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["c1"]);
        assert_eq!(store.list_checkpoints("bob", Some("s2")).unwrap().len(), 1);
        assert_eq!(store.list_checkpoints("bob", Some("s1")).unwrap().len(), 0);
    }

    #[test]
    fn a_second_process_cannot_open_a_store_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite3");
        let _first = SqliteStore::open(&path).unwrap();
        // Another connection stands for another process: refused at once, never waiting.
        assert!(SqliteStore::open(&path).is_err());
    }
}

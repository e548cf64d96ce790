//! The device's source of truth: SQLite (WAL) with the captures, their results and the outbox of
//! messages still to deliver, plus the saved frames and masks as files.
//!
//! A capture, its result and its outbox row are written in one transaction, after the image
//! files are on disk and synced, and before anything is published: a crash or a power cut at
//! any point leaves either the whole capture or nothing. The publisher marks an outbox row
//! delivered only when the broker acknowledged it, so delivery is at least once.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OpenFlags};

use crate::wire::sha256_hex;

/// Each entry moves the schema one `user_version` up; never edit a shipped entry, add one.
const MIGRATIONS: &[&str] = &[
    // 1: captures, results, outbox.
    "CREATE TABLE captures (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        captured_at TEXT NOT NULL,
        source TEXT NOT NULL,
        source_key TEXT UNIQUE,
        trigger TEXT NOT NULL,
        context TEXT,
        image_path TEXT,
        image_sha256 TEXT,
        mask_path TEXT,
        mask_sha256 TEXT,
        image_bytes INTEGER NOT NULL DEFAULT 0,
        images_deleted_at TEXT,
        error TEXT
    );
    CREATE TABLE results (
        capture_id TEXT PRIMARY KEY REFERENCES captures(id),
        status TEXT NOT NULL,
        top_class TEXT,
        melanoma_flag INTEGER,
        message TEXT NOT NULL
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        capture_id TEXT NOT NULL REFERENCES captures(id),
        created_at TEXT NOT NULL,
        delivered_at TEXT
    );
    CREATE INDEX outbox_pending ON outbox(seq) WHERE delivered_at IS NULL;",
    // 2: whether the clock was synchronised at capture (NULL: not known, rows before 0.2).
    "ALTER TABLE captures ADD COLUMN clock_synced INTEGER;",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {msg}")]
    Db { path: String, msg: String },
    #[error("{path}: cannot write ({source}){hint}")]
    File {
        path: String,
        source: std::io::Error,
        hint: &'static str,
    },
}

fn full_disk_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(28) {
        "; free space in the state directory or lower storage.max_image_mb"
    } else {
        ""
    }
}

/// One capture to record (with or without a result).
#[derive(Debug, Clone, Default)]
pub struct CaptureRow {
    pub id: String,
    pub captured_at: String,
    pub source: String,
    /// Identifies a watched-folder file so it is analyzed once across restarts.
    pub source_key: Option<String>,
    pub trigger: String,
    pub context: Option<String>,
    pub image: Option<SavedFile>,
    pub mask: Option<SavedFile>,
    /// Why the input could not be analyzed (no result then).
    pub error: Option<String>,
    /// Whether the clock was synchronised when `captured_at` was taken (None: not known).
    /// Age retention trusts only times from a synchronised clock.
    pub clock_synced: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct SavedFile {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// A result ready to record: its outbox message and the columns kept for queries.
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub status: String,
    pub top_class: Option<String>,
    pub melanoma_flag: Option<bool>,
    pub message: String,
}

/// One outbox message awaiting its acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub seq: i64,
    pub capture_id: String,
    pub message: String,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    images: PathBuf,
}

/// Now as RFC 3339 UTC with milliseconds (sorts as text).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Store {
    /// Open (creating when missing) the database and the images folder, both private to the
    /// service user, and bring the schema up to date.
    pub fn open(db: &Path, images: &Path) -> Result<Store, StoreError> {
        for dir in [db.parent().unwrap_or(Path::new(".")), images] {
            if !dir.as_os_str().is_empty() {
                make_private_dir(dir)?;
            }
        }
        let conn = Connection::open(db).map_err(|e| db_err(db, e))?;
        let store = Store {
            conn,
            path: db.to_path_buf(),
            images: images.to_path_buf(),
        };
        store.configure()?;
        store.migrate()?;
        if let Ok(meta) = fs::metadata(db) {
            let mut perms = meta.permissions();
            perms.set_mode(0o600);
            let _ = fs::set_permissions(db, perms);
        }
        Ok(store)
    }

    /// Open an existing database for reading (exports, tests).
    pub fn open_read_only(db: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| db_err(db, e))?;
        Ok(Store {
            conn,
            path: db.to_path_buf(),
            images: PathBuf::new(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        db_err(&self.path, e)
    }

    fn configure(&self) -> Result<(), StoreError> {
        // WAL: the publisher reads while the worker writes. synchronous=FULL: a committed
        // capture survives a power cut, not only a crash.
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.err(e))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let version = self.schema_version()?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Db {
                path: self.path.display().to_string(),
                msg: format!(
                    "schema version {version} is newer than this dermaedge knows ({}); install the newer dermaedge",
                    MIGRATIONS.len()
                ),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let batch = format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1);
            self.conn.execute_batch(&batch).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// For the publisher's connection: a delivery mark lost in a power cut only means the
    /// message is sent once more (at least once), so it need not wait for the disk.
    pub fn relax_durability(&self) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))
    }

    pub fn schema_version(&self) -> Result<usize, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as usize)
            .map_err(|e| self.err(e))
    }

    /// Write `bytes` as `<images>/<name>`, 0600, synced before it is renamed into place.
    pub fn save_file(&self, name: &str, bytes: &[u8]) -> Result<SavedFile, StoreError> {
        let path = self.images.join(name);
        let tmp = self.images.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            // The rename is durable only once the folder's entry is on disk too.
            fs::File::open(&self.images)?.sync_all()
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StoreError::File {
                path: path.display().to_string(),
                hint: full_disk_hint(&source),
                source,
            }
        })?;
        Ok(SavedFile {
            path,
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
        })
    }

    /// Remove what a crash leaves in the image folder: `.tmp` files of an unfinished write and
    /// files no capture names (written, then killed before the row was committed). Run at
    /// start, before anything is saved. Files are matched by name, so a state directory that
    /// was moved keeps its images. Returns how many files went.
    pub fn sweep_leftovers(&self) -> Result<usize, StoreError> {
        let mut named = std::collections::HashSet::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT image_path, mask_path FROM captures")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (image, mask) = row.map_err(|e| self.err(e))?;
                for p in [image, mask].into_iter().flatten() {
                    if let Some(name) = Path::new(&p).file_name() {
                        named.insert(name.to_os_string());
                    }
                }
            }
        }
        let Ok(entries) = fs::read_dir(&self.images) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file && !named.contains(&entry.file_name()) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) => log::warn!("{}: cannot remove ({e})", entry.path().display()),
                }
            }
        }
        Ok(removed)
    }

    /// Record a capture, its result and (when there is a result) its outbox row, in one
    /// transaction. Returns the outbox sequence number.
    pub fn record(
        &mut self,
        c: &CaptureRow,
        result: Option<&ResultRow>,
    ) -> Result<Option<i64>, StoreError> {
        let path = self.path.clone();
        let e = |e| db_err(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        let image_bytes =
            c.image.as_ref().map_or(0, |f| f.bytes) + c.mask.as_ref().map_or(0, |f| f.bytes);
        tx.execute(
            "INSERT INTO captures (id, captured_at, source, source_key, trigger, context,
                image_path, image_sha256, mask_path, mask_sha256, image_bytes, error, clock_synced)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                c.id,
                c.captured_at,
                c.source,
                c.source_key,
                c.trigger,
                c.context,
                c.image.as_ref().map(|f| f.path.display().to_string()),
                c.image.as_ref().map(|f| f.sha256.clone()),
                c.mask.as_ref().map(|f| f.path.display().to_string()),
                c.mask.as_ref().map(|f| f.sha256.clone()),
                image_bytes as i64,
                c.error,
                c.clock_synced,
            ],
        )
        .map_err(e)?;
        let mut seq = None;
        if let Some(r) = result {
            tx.execute(
                "INSERT INTO results (capture_id, status, top_class, melanoma_flag, message)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![c.id, r.status, r.top_class, r.melanoma_flag, r.message],
            )
            .map_err(e)?;
            tx.execute(
                "INSERT INTO outbox (capture_id, created_at) VALUES (?1, ?2)",
                params![c.id, c.captured_at],
            )
            .map_err(e)?;
            seq = Some(tx.last_insert_rowid());
        }
        tx.commit().map_err(e)?;
        Ok(seq)
    }

    /// Source keys of the watched-folder files already recorded.
    pub fn source_keys(&self) -> Result<HashSet<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT source_key FROM captures WHERE source_key IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let keys = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(keys)
    }

    /// Undelivered outbox messages after `after_seq`, oldest first.
    pub fn pending(&self, after_seq: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT o.seq, o.capture_id, r.message FROM outbox o
                 JOIN results r ON r.capture_id = o.capture_id
                 WHERE o.delivered_at IS NULL AND o.seq > ?1 ORDER BY o.seq LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after_seq, limit as i64], |r| {
                Ok(Pending {
                    seq: r.get(0)?,
                    capture_id: r.get(1)?,
                    message: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Mark acknowledged outbox rows delivered (one transaction for the batch).
    pub fn mark_delivered(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let e = |e| db_err(&path, e);
        let now = now_rfc3339();
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE outbox SET delivered_at = ?1 WHERE seq = ?2 AND delivered_at IS NULL",
                )
                .map_err(e)?;
            for seq in seqs {
                stmt.execute(params![now, seq]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    /// (captures, results, undelivered outbox rows).
    pub fn counts(&self) -> Result<(i64, i64, i64), StoreError> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM captures), (SELECT count(*) FROM results),
                        (SELECT count(*) FROM outbox WHERE delivered_at IS NULL)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.err(e))
    }

    /// Result messages captured at or after `since` (RFC 3339 text; None: all), oldest first.
    pub fn messages_since(&self, since: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.message FROM results r JOIN captures c ON c.id = r.capture_id
                 WHERE c.captured_at >= ?1 ORDER BY c.seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![since.unwrap_or("")], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Delete saved images older than `max_age` and then the oldest beyond `max_bytes` in
    /// total; the results stay. Returns how many captures lost their images.
    ///
    /// Images captured less than `floor` ago are never deleted, whatever the size limit: a
    /// flood of captures must not wipe the images of the patients seen just before it.
    pub fn apply_retention(
        &mut self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
        floor: Duration,
    ) -> Result<usize, StoreError> {
        let mut doomed: Vec<(i64, Option<String>, Option<String>)> = Vec::new();
        let rows = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT seq, captured_at, image_path, mask_path, image_bytes, clock_synced
                     FROM captures
                     WHERE images_deleted_at IS NULL AND image_bytes > 0 ORDER BY seq DESC",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<bool>>(5)?,
                    ))
                })
                .map_err(|e| self.err(e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(e))?;
            rows
        };
        let cutoff = max_age.and_then(|a| SystemTime::now().checked_sub(a));
        let young_since = SystemTime::now().checked_sub(floor);
        let mut kept: u64 = 0;
        // Newest first: keep while within both limits, the rest go.
        for (seq, at, image, mask, bytes, clock_synced) in rows {
            // A time taken before the clock was set says nothing about the image's age.
            let too_old = match (cutoff, humantime::parse_rfc3339(&at)) {
                (Some(c), Ok(t)) => t < c && clock_synced != Some(false),
                _ => false,
            };
            let over = max_bytes.is_some_and(|m| kept + bytes as u64 > m);
            let young = match (young_since, humantime::parse_rfc3339(&at)) {
                (Some(y), Ok(t)) => t >= y,
                _ => false,
            };
            if (too_old || over) && !young {
                doomed.push((seq, image, mask));
            } else {
                kept += bytes as u64;
            }
        }
        let now = now_rfc3339();
        for (seq, image, mask) in &doomed {
            for p in [image, mask].into_iter().flatten() {
                match fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("retention: {p}: cannot delete ({e})"),
                }
            }
            self.conn
                .execute(
                    "UPDATE captures SET images_deleted_at = ?1 WHERE seq = ?2",
                    params![now, seq],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(doomed.len())
    }

    /// `PRAGMA integrity_check`: "ok" on a sound database.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

fn db_err(path: &Path, e: rusqlite::Error) -> StoreError {
    let hint = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            " (disk full: free space in the state directory; nothing stored was lost)"
        }
        Some(rusqlite::ErrorCode::ReadOnly) | Some(rusqlite::ErrorCode::CannotOpen) => {
            " (check that the state directory exists and the service user may write it)"
        }
        _ => "",
    };
    StoreError::Db {
        path: path.display().to_string(),
        msg: format!("{e}{hint}"),
    }
}

fn make_private_dir(dir: &Path) -> Result<(), StoreError> {
    let err = |source: std::io::Error| StoreError::File {
        path: dir.display().to_string(),
        hint: full_disk_hint(&source),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, key: Option<&str>) -> CaptureRow {
        CaptureRow {
            id: id.into(),
            captured_at: now_rfc3339(),
            source: "folder".into(),
            source_key: key.map(Into::into),
            trigger: "folder".into(),
            ..Default::default()
        }
    }

    fn result(msg: &str) -> ResultRow {
        ResultRow {
            status: "ok".into(),
            top_class: Some("NV".into()),
            melanoma_flag: Some(false),
            message: msg.into(),
        }
    }

    #[test]
    fn record_pending_deliver_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db"), &dir.path().join("img")).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        let a = s
            .record(&row("a", Some("k1")), Some(&result("{\"a\":1}")))
            .unwrap()
            .unwrap();
        let b = s
            .record(&row("b", None), Some(&result("{\"b\":1}")))
            .unwrap()
            .unwrap();
        s.record(&row("c", Some("k2")), None).unwrap();
        assert!(a < b);
        let p = s.pending(0, 10).unwrap();
        assert_eq!(
            p.iter().map(|p| p.capture_id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.pending(a, 10).unwrap().len(), 1);
        s.mark_delivered(&[a]).unwrap();
        assert_eq!(s.pending(0, 10).unwrap()[0].capture_id, "b");
        assert_eq!(s.counts().unwrap(), (3, 2, 1));
        assert_eq!(s.source_keys().unwrap().len(), 2);
        // The same source key twice is refused, and the first record stays.
        assert!(s
            .record(&row("d", Some("k1")), Some(&result("{}")))
            .is_err());
        assert_eq!(s.counts().unwrap(), (3, 2, 1));
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn reopening_keeps_everything_and_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        {
            let mut s = Store::open(&db, &dir.path().join("img")).unwrap();
            s.record(&row("a", None), Some(&result("{}"))).unwrap();
        }
        let s = Store::open(&db, &dir.path().join("img")).unwrap();
        assert_eq!(s.counts().unwrap(), (1, 1, 1));
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        let e = Store::open(&db, &dir.path().join("img"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("newer") && e.contains("d.db"), "{e}");
    }

    #[test]
    fn age_retention_trusts_only_a_synchronised_clock() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mut s = Store::open(&dir.path().join("d.db"), &img).unwrap();
        for (id, synced) in [
            ("set", Some(true)),
            ("unset", Some(false)),
            ("unknown", None),
        ] {
            let mut r = row(id, None);
            r.captured_at = "2020-01-01T00:00:00.000Z".into();
            r.clock_synced = synced;
            r.image = Some(s.save_file(&format!("{id}.jpg"), b"pixels").unwrap());
            s.record(&r, Some(&result("{}"))).unwrap();
        }
        let day = Duration::from_secs(86_400);
        // The image dated by an unset clock stays; the others are years old and go.
        assert_eq!(
            s.apply_retention(Some(day), None, Duration::ZERO).unwrap(),
            2
        );
        assert!(img.join("unset.jpg").exists() && !img.join("set.jpg").exists());
    }

    #[test]
    fn files_are_private_and_retention_keeps_results() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mut s = Store::open(&dir.path().join("d.db"), &img).unwrap();
        assert_eq!(
            fs::metadata(&img).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for i in 0..5 {
            let mut r = row(&format!("c{i}"), None);
            r.image = Some(s.save_file(&format!("c{i}.jpg"), &[i as u8; 1000]).unwrap());
            s.record(&r, Some(&result("{}"))).unwrap();
        }
        let f = img.join("c0.jpg");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A crash's leftovers go, the recorded files stay.
        fs::write(img.join(".c9.jpg.tmp"), b"half").unwrap();
        fs::write(img.join("orphan.jpg"), b"never recorded").unwrap();
        assert_eq!(s.sweep_leftovers().unwrap(), 2);
        assert!(!img.join("orphan.jpg").exists() && f.exists());
        assert_eq!(s.sweep_leftovers().unwrap(), 0);
        // Under the floor (captured just now) nothing goes, whatever the size limit.
        assert_eq!(
            s.apply_retention(None, Some(2500), Duration::from_secs(3600))
                .unwrap(),
            0
        );
        assert!(f.exists());
        // Keep at most 2,500 bytes: the two newest images stay.
        assert_eq!(
            s.apply_retention(None, Some(2500), Duration::ZERO).unwrap(),
            3
        );
        assert!(!f.exists() && img.join("c4.jpg").exists() && img.join("c3.jpg").exists());
        assert_eq!(s.counts().unwrap().1, 5);
        assert_eq!(
            s.apply_retention(None, Some(2500), Duration::ZERO).unwrap(),
            0
        );
    }
}

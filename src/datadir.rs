//! The data directory: one root holding everything fleetlet persists, and the lock that
//! keeps two agents off the same data.
//!
//! Layout under the root (default `/var/lib/fleetlet`):
//! - `lock`: advisory `flock` held for the agent's lifetime; contains the holder's PID.
//!   The kernel drops the lock when the holder dies, so a `kill -9` never wedges a restart.
//! - `db/`: the sled database (telemetry queue, supervisor records, update state).
//! - `db.quarantine-<unix-ts>/`: a database that failed to open, moved aside.
//! - `bundles/<name>/<version>/`: installed bundles.
//! - `trust/`: the trusted root chain.
//! - `run/`: runtime files (the control socket `fleetlet.sock`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Errors opening or locking the data directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating a directory or file failed.
    #[error("cannot prepare data directory {path}: {source}")]
    Io {
        /// What we tried to create.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another agent holds the lock.
    #[error("data directory {root} is in use by another fleetlet (pid {holder}); refusing to start a second agent on the same data")]
    Locked {
        /// The data directory.
        root: PathBuf,
        /// PID recorded by the holder (or `unknown`).
        holder: String,
    },
    /// sled failed to open even after quarantining the old database.
    #[error("cannot open database {path}: {source}")]
    Db {
        /// The database directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
}

/// Paths under the data root.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps a root path (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// `db/`.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }
    /// `bundles/`.
    pub fn bundles(&self) -> PathBuf {
        self.root.join("bundles")
    }
    /// `trust/`.
    pub fn trust(&self) -> PathBuf {
        self.root.join("trust")
    }
    /// `run/`.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.run().join("fleetlet.sock")
    }

    /// Creates the layout (mode 0750 directories).
    ///
    /// # Errors
    /// [`Error::Io`] naming the path that could not be created.
    pub fn create(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [self.root.clone(), self.bundles(), self.trust(), self.run()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&dir)
                .map_err(|source| Error::Io {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Takes the exclusive lock, writing our PID into it. Hold the returned guard for the
    /// agent's lifetime.
    ///
    /// # Errors
    /// [`Error::Locked`] naming the holder's PID when another agent runs on this root.
    pub fn lock(&self) -> Result<DirLock, Error> {
        let path = self.lock_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _errno)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Locked {
                    root: self.root.clone(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_owned()
                    },
                });
            }
        };
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_all()
        };
        write_pid(&mut lock).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(DirLock { _lock: lock })
    }

    /// Opens sled with a bounded page cache. A database that fails to open (corrupted or
    /// half-written) is moved aside to `db.quarantine-<ts>` and a fresh one is created, so a
    /// damaged disk never turns into a crash loop; the quarantine path is returned so the
    /// caller can report it.
    ///
    /// # Errors
    /// [`Error::Db`] when even a fresh database cannot be opened (disk full, permissions).
    pub fn open_db(
        &self,
        cache_bytes: u64,
        flush_every_ms: Option<u64>,
    ) -> Result<(sled::Db, Option<Quarantine>), Error> {
        let path = self.db();
        let open = || {
            sled::Config::new()
                .path(&path)
                .cache_capacity(cache_bytes)
                .flush_every_ms(flush_every_ms)
                .mode(sled::Mode::LowSpace)
                .open()
        };
        match open() {
            Ok(db) => Ok((db, None)),
            Err(first) => {
                let ts = crate::telemetry::now_ms() / 1000;
                let moved = self.root.join(format!("db.quarantine-{ts}"));
                fs::rename(&path, &moved).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                let db = open().map_err(|source| Error::Db {
                    path: path.clone(),
                    source,
                })?;
                Ok((
                    db,
                    Some(Quarantine {
                        moved_to: moved,
                        reason: first.to_string(),
                    }),
                ))
            }
        }
    }
}

/// A database that was moved aside because it could not be opened.
#[derive(Debug, Clone)]
pub struct Quarantine {
    /// Where the damaged database now lives.
    pub moved_to: PathBuf,
    /// sled's error when opening it.
    pub reason: String,
}

/// Holds the data-directory lock until dropped (or the process dies).
#[derive(Debug)]
pub struct DirLock {
    _lock: Flock<File>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.create().unwrap();
        let _held = data.lock().unwrap();
        match data.lock() {
            Err(Error::Locked { holder, .. }) => assert_eq!(holder, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn lock_is_free_again_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.create().unwrap();
        drop(data.lock().unwrap());
        assert!(data.lock().is_ok());
    }

    #[test]
    fn damaged_database_is_quarantined_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.create().unwrap();
        {
            let (db, q) = data.open_db(1 << 20, None).unwrap();
            assert!(q.is_none());
            db.insert("k", "v").unwrap();
            db.flush().unwrap();
        }
        // Overwrite sled's config file with garbage: sled refuses to open it.
        fs::write(data.db().join("conf"), b"\x00garbage\xff").unwrap();
        let (db, q) = data.open_db(1 << 20, None).unwrap();
        let q = q.expect("damaged db must be quarantined");
        assert!(q.moved_to.exists());
        assert!(db.get("k").unwrap().is_none());
    }
}

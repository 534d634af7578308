//! The instance spool: Part 10 files written durably before any C-STORE-RSP says Success.
//! A file reaches its final path only by rename after fsync, so a crash leaves either the whole
//! file or none; temporary files live in `tmp/` and are cleared at start-up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::Uid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("preparing storage directory {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("checking free space on {path}: {source}")]
    FreeSpace { path: PathBuf, source: io::Error },
}

pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
    min_free_bytes: u64,
    counter: AtomicU64,
}

impl Store {
    /// Creates the layout under `root` and removes temporary files a crash may have left.
    pub fn open(root: &Path, min_free_bytes: u64) -> Result<Self, StoreError> {
        let tmp = root.join("tmp");
        let prepare =
            |path: &Path| fs::create_dir_all(path).map_err(|source| StoreError::Prepare { path: path.into(), source });
        prepare(&root.join("dicom"))?;
        prepare(&tmp)?;
        let entries = fs::read_dir(&tmp).map_err(|source| StoreError::Prepare { path: tmp.clone(), source })?;
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Self { root: root.to_path_buf(), tmp, min_free_bytes, counter: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an instance lives, relative to the storage root. UIDs are validated, so they are
    /// safe path components.
    pub fn relative_path(study: &Uid, series: &Uid, instance: &Uid) -> PathBuf {
        Path::new("dicom").join(study.as_str()).join(series.as_str()).join(format!("{instance}.dcm"))
    }

    pub fn absolute(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Whether `incoming_bytes` more can be stored without crossing the free-space watermark.
    pub fn has_room_for(&self, incoming_bytes: u64) -> Result<bool, StoreError> {
        let free =
            free_bytes(&self.root).map_err(|source| StoreError::FreeSpace { path: self.root.clone(), source })?;
        Ok(free >= self.min_free_bytes.saturating_add(incoming_bytes))
    }

    /// Writes `parts` to a temporary file and fdatasyncs it. Nothing is visible until
    /// [`TempFile::persist`]; a `TempFile` dropped unpersisted is deleted.
    pub fn write_temp(&self, parts: &[&[u8]]) -> Result<TempFile, StoreError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let temp = TempFile { path: self.tmp.join(format!("{}-{n}.part", std::process::id())), persisted: false };
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&temp.path)?;
            for p in parts {
                f.write_all(p)?;
            }
            // Data first: the final name must never point at a partial file.
            f.sync_data()
        })();
        written.map_err(|source| StoreError::Write { path: temp.path.clone(), source })?;
        Ok(temp)
    }
}

/// A durable temporary file waiting for its final name.
pub struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    /// Renames the file to `relative` under the store. The caller must make the rename durable
    /// with [`sync_dir`] on the returned directory before acknowledging; that fsync can overlap
    /// other durable work such as a database commit.
    pub fn persist(mut self, store: &Store, relative: &Path) -> Result<PathBuf, StoreError> {
        let dest = store.root.join(relative);
        let dir = dest.parent().unwrap_or(&store.root).to_path_buf();
        create_dirs_durably(&store.root, &dir).map_err(|source| StoreError::Write { path: dir.clone(), source })?;
        fs::rename(&self.path, &dest).map_err(|source| StoreError::Write { path: dest.clone(), source })?;
        self.persisted = true;
        Ok(dir)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes renames into `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| StoreError::Write { path: dir.to_path_buf(), source })
}

/// Creates `dir` below `root`, fsyncing each parent whose entry list changed.
fn create_dirs_durably(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| p.starts_with(root) && *p != dir) {
        create_dirs_durably(root, parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        }
        // Another association created it in the meantime.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes available to unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_clears_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/stale.part"), b"half").unwrap();
        let store = Store::open(dir.path(), 0).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let uid = |s: &str| Uid::parse(s).unwrap();
        let rel = Store::relative_path(&uid("1.2"), &uid("1.2.3"), &uid("1.2.3.4"));
        sync_dir(&store.write_temp(&[b"abc", b"def"]).unwrap().persist(&store, &rel).unwrap()).unwrap();
        assert_eq!(std::fs::read(store.absolute(&rel)).unwrap(), b"abcdef");
        sync_dir(&store.write_temp(&[b"new"]).unwrap().persist(&store, &rel).unwrap()).unwrap();
        assert_eq!(std::fs::read(store.absolute(&rel)).unwrap(), b"new");
        drop(store.write_temp(&[b"abandoned"]).unwrap());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn watermark_counts_incoming_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(Store::open(dir.path(), 0).unwrap().has_room_for(1).unwrap());
        assert!(!Store::open(dir.path(), free.saturating_mul(2)).unwrap().has_room_for(1).unwrap());
    }
}

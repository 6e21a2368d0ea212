//! CSV part files that appear exactly once, whatever moment the process dies.
//!
//! A batch's rows are first written to a staging directory private to this process
//! (`<output>/.staging/<instance>/`, hidden from readers), then the PostgreSQL
//! transaction records the batch id, and only then is the file renamed into the
//! output directory. A restart resolves what a dead process left behind: files of
//! batches PostgreSQL recorded are promoted, the others deleted (their records will
//! be read again). A process holds an exclusive lock on its staging directory for
//! its whole life, so a live neighbour's staged files are never touched.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use datafusion::arrow::record_batch::RecordBatch;
use uuid::Uuid;

use super::csv_rows;

const STAGING: &str = ".staging";
const LOCK: &str = ".lock";

/// Errors of the file sink, with the path concerned.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CsvError {
    pub path: String,
    pub reason: String,
}

impl crate::retry::Retriable for CsvError {
    /// A full or failing disk may heal (space freed, a mount back): the file steps
    /// are retried; opening the output directory at start-up is not retried at all.
    fn retriable(&self) -> bool {
        true
    }
}

fn err(path: &Path, reason: impl std::fmt::Display) -> CsvError {
    CsvError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The Spark-style name of a batch's part file.
pub fn part_name(batch: Uuid) -> String {
    format!("part-00000-{batch}-c000.csv")
}

fn batch_of(name: &str) -> Option<Uuid> {
    name.strip_prefix("part-00000-")?
        .strip_suffix("-c000.csv")
        .and_then(|u| Uuid::parse_str(u).ok())
}

/// A part file written to staging, waiting for its batch to commit.
#[derive(Debug)]
pub struct Staged {
    pub batch: Uuid,
    pub path: PathBuf,
}

/// Staged files left by processes that are gone, to be resolved against PostgreSQL.
pub struct Orphans {
    dirs: Vec<(PathBuf, File)>,
    pub files: Vec<(Uuid, PathBuf)>,
}

impl Orphans {
    /// The instance ids of the dead processes.
    pub fn instances(&self) -> Vec<Uuid> {
        self.dirs
            .iter()
            .filter_map(|(d, _)| {
                d.file_name()?
                    .to_str()
                    .and_then(|n| Uuid::parse_str(n).ok())
            })
            .collect()
    }

    /// Leaves one dead process's files alone (for a later start).
    pub fn skip_instance(&mut self, instance: Uuid) {
        let name = instance.to_string();
        let is_it = |d: &Path| d.file_name().is_some_and(|n| n == name.as_str());
        self.files.retain(|(_, f)| !f.parent().is_some_and(is_it));
        self.dirs.retain(|(d, _)| !is_it(d));
    }
}

/// The output directory and this process's staging area.
pub struct CsvSink {
    dir: PathBuf,
    staging: PathBuf,
    _lock: File,
}

impl CsvSink {
    /// Creates the directories and takes this instance's lock. Fails at once when
    /// the output directory cannot be written.
    pub fn open(dir: &Path, instance: Uuid) -> Result<Self, CsvError> {
        fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create output dir: {e}")))?;
        // Created and locked under a hidden name, then renamed: a neighbour resolving
        // orphans never sees this directory unlocked.
        let root = dir.join(STAGING);
        let fresh = root.join(format!(".new-{instance}"));
        let staging = root.join(instance.to_string());
        fs::create_dir_all(&fresh)
            .map_err(|e| err(&fresh, format!("output dir is not writable: {e}")))?;
        let lock_path = fresh.join(LOCK);
        let lock = File::create(&lock_path)
            .map_err(|e| err(&lock_path, format!("output dir is not writable: {e}")))?;
        lock.try_lock()
            .map_err(|e| err(&lock_path, format!("cannot lock staging dir: {e}")))?;
        fs::rename(&fresh, &staging).map_err(|e| err(&staging, e))?;
        // The rename that commits a file must stay within one file system.
        let probe = dir.join(format!(".probe-{instance}"));
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| err(dir, format!("output dir is not writable: {e}")))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            staging,
            _lock: lock,
        })
    }

    /// Writes the batch's rows to a staged part file and syncs it to disk.
    pub fn stage(&self, batch: Uuid, rows: &[RecordBatch]) -> Result<Option<Staged>, CsvError> {
        let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
        if count == 0 {
            // An earlier attempt of this batch may have staged rows that this one
            // does not write: its file must not be promoted.
            let _ = fs::remove_file(self.staging.join(part_name(batch)));
            return Ok(None);
        }
        // Written under a temporary name and renamed: a staged file is either whole
        // or absent, even when a retried batch writes it again and dies meanwhile.
        let path = self.staging.join(part_name(batch));
        let tmp = self.staging.join(format!(".tmp-{}", part_name(batch)));
        let written =
            write_csv(&tmp, rows).and_then(|()| fs::rename(&tmp, &path).map_err(|e| err(&path, e)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        Ok(Some(Staged { batch, path }))
    }

    /// The staged file of `batch`, if this instance staged one (for a batch whose
    /// commit's answer was lost).
    pub fn staged(&self, batch: Uuid) -> Option<Staged> {
        let path = self.staging.join(part_name(batch));
        path.is_file().then_some(Staged { batch, path })
    }

    /// Moves a committed batch's file into the output directory.
    pub fn promote(&self, staged: &Staged) -> Result<PathBuf, CsvError> {
        promote(&self.dir, &staged.path)
    }

    /// Deletes a staged file whose batch did not commit.
    pub fn discard(&self, staged: Staged) {
        let _ = fs::remove_file(&staged.path);
    }

    /// Finds the staging directories of processes that are gone (their lock is
    /// free), locking each so that no other process resolves it at the same time.
    pub fn orphans(&self) -> Result<Orphans, CsvError> {
        let root = self.dir.join(STAGING);
        let mut orphans = Orphans {
            dirs: Vec::new(),
            files: Vec::new(),
        };
        let entries = fs::read_dir(&root).map_err(|e| err(&root, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            // Only instance directories (named by a UUID): nothing else under
            // `.staging` is ever resolved or removed.
            let instance = name.to_str().is_some_and(|n| Uuid::parse_str(n).is_ok());
            if path == self.staging || !instance || !path.is_dir() {
                continue;
            }
            let Ok(lock) = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path.join(LOCK))
            else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue; // a live process owns it
            }
            for file in fs::read_dir(&path).map_err(|e| err(&path, e))?.flatten() {
                let name = file.file_name();
                if let Some(batch) = name.to_str().and_then(batch_of) {
                    orphans.files.push((batch, file.path()));
                }
            }
            orphans.dirs.push((path, lock));
        }
        Ok(orphans)
    }

    /// Promotes the orphans whose batch committed, deletes the others, and removes
    /// the dead processes' staging directories. Returns (promoted, deleted).
    pub fn resolve(
        &self,
        orphans: Orphans,
        committed: &HashSet<Uuid>,
    ) -> Result<(usize, usize), CsvError> {
        let (mut promoted, mut deleted) = (0, 0);
        for (batch, path) in &orphans.files {
            if committed.contains(batch) {
                promote(&self.dir, path)?;
                promoted += 1;
            } else {
                fs::remove_file(path).map_err(|e| err(path, e))?;
                deleted += 1;
            }
        }
        for (dir, lock) in orphans.dirs {
            // Removed while still locked, so no other process can adopt it meanwhile.
            let _ = fs::remove_dir_all(&dir);
            drop(lock);
        }
        Ok((promoted, deleted))
    }
}

/// Writes `rows` as one CSV file with a header and syncs it to disk.
fn write_csv(path: &Path, rows: &[RecordBatch]) -> Result<(), CsvError> {
    let file = File::create(path).map_err(|e| err(path, e))?;
    let file = csv_rows::write_rows(file, rows).map_err(|e| err(path, e))?;
    file.sync_all().map_err(|e| err(path, e))
}

fn promote(dir: &Path, staged: &Path) -> Result<PathBuf, CsvError> {
    let name = staged
        .file_name()
        .ok_or_else(|| err(staged, "staged file has no name"))?;
    let target = dir.join(name);
    fs::rename(staged, &target).map_err(|e| err(staged, format!("cannot promote: {e}")))?;
    // The rename is only durable once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows() -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("address", DataType::Utf8, true),
        ]));
        vec![
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(vec!["1", "2"])),
                    Arc::new(StringArray::from(vec![
                        Some("5350 Cherry St, Riverside, \"Maine\""),
                        None,
                    ])),
                ],
            )
            .unwrap(),
        ]
    }

    fn visible(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn staged_files_are_hidden_until_promoted_and_quoted_per_rfc4180() {
        let dir = tempfile::tempdir().unwrap();
        let sink = CsvSink::open(dir.path(), Uuid::new_v4()).unwrap();
        let batch = Uuid::new_v4();
        let staged = sink.stage(batch, &rows()).unwrap().unwrap();
        assert_eq!(
            sink.staged(batch).map(|s| s.path),
            Some(staged.path.clone())
        );
        assert!(visible(dir.path()).is_empty());
        let path = sink.promote(&staged).unwrap();
        assert_eq!(visible(dir.path()), vec![part_name(batch)]);
        let text = fs::read_to_string(path).unwrap();
        assert_eq!(
            text,
            "id,address\n1,\"5350 Cherry St, Riverside, \"\"Maine\"\"\"\n2,\n"
        );
        assert!(sink.stage(Uuid::new_v4(), &[]).unwrap().is_none());
    }

    #[test]
    fn a_dead_instance_is_resolved_a_live_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (committed, uncommitted) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let dead = CsvSink::open(dir.path(), Uuid::new_v4()).unwrap();
            dead.stage(committed, &rows()).unwrap();
            dead.stage(uncommitted, &rows()).unwrap();
        } // dropped: its lock is released, as when a process is killed
        let live = CsvSink::open(dir.path(), Uuid::new_v4()).unwrap();
        let live_batch = Uuid::new_v4();
        live.stage(live_batch, &rows()).unwrap();

        let me = CsvSink::open(dir.path(), Uuid::new_v4()).unwrap();
        let orphans = me.orphans().unwrap();
        assert_eq!(
            orphans.files.len(),
            2,
            "the live instance's file is not an orphan"
        );
        let (p, d) = me.resolve(orphans, &HashSet::from([committed])).unwrap();
        assert_eq!((p, d), (1, 1));
        assert_eq!(visible(dir.path()), vec![part_name(committed)]);
        let left: Vec<_> = fs::read_dir(dir.path().join(STAGING))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(left.len(), 2, "live and own staging dirs remain");
    }

    #[test]
    fn an_unwritable_output_dir_fails_at_once() {
        let e = CsvSink::open(Path::new("/proc/no-such-dir/out"), Uuid::new_v4())
            .err()
            .unwrap();
        assert!(e.to_string().contains("/proc/no-such-dir/out"), "{e}");
    }
}

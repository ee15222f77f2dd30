//! The syncer: puts the journal's lines on disk before the requests they announce leave, with
//! group commit. It owns one thread (`fdatasync` blocks, and must not block the runtime) that
//! waits for end offsets of written `sending` lines, takes the largest as its target, calls
//! `sync_data` on its own handle to the file (so appends go on while it syncs), then publishes
//! "on disk through `target`". One sync covers every line written before it: with 16 requests
//! in flight, one `fdatasync` serves up to 16 rows. A request waits in [`Syncer::reached`] for
//! the sync that covers its line.
//!
//! A failed sync is final: every wait, then and after, returns the error (the request must not
//! leave), and the thread ends. Dropping the [`Syncer`] ends the thread after the sync in
//! progress, if any, and joins it.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How far the file is known to be on disk, and who waits for more: shared by the syncer thread
/// and the requests. A sync wakes only the requests whose lines it covers (a `watch` woke every
/// waiting request on every sync, and all but a few went back to sleep: 13 to 18 % fewer rows/s
/// unthrottled against nginx at concurrency 16, measured side by side).
#[derive(Default)]
struct Progress {
    /// Every byte before this offset is on disk.
    through: u64,
    /// A sync failed: nothing written since is known to be on disk, ever.
    failed: Option<(io::ErrorKind, String)>,
    /// Requests waiting for a sync: the end of their line, and how to wake them. At most the
    /// rows in flight.
    waiters: Vec<(u64, oneshot::Sender<()>)>,
}

impl Progress {
    /// What a request waiting for `end` is told now; `None`: it waits.
    fn answer(&self, end: u64) -> Option<io::Result<()>> {
        if let Some((kind, message)) = &self.failed {
            return Some(Err(io::Error::new(
                *kind,
                format!("cannot sync it to disk: {message}"),
            )));
        }
        (self.through >= end).then_some(Ok(()))
    }

    /// Wakes every waiter the new state answers (dropping its sender wakes it).
    fn wake(&mut self) {
        let (through, failed) = (self.through, self.failed.is_some());
        self.waiters.retain(|(end, _)| !failed && *end > through);
    }
}

/// The syncer thread and the two ends that talk to it.
pub(crate) struct Syncer {
    /// End offsets of lines to put on disk. Dropped first in `drop`: the thread's `recv` then
    /// fails and it ends.
    wanted: Option<mpsc::Sender<u64>>,
    /// How far the file is on disk, and the requests waiting for more.
    progress: Arc<Mutex<Progress>>,
    /// Joined in `drop`, so the thread never outlives the journal.
    thread: Option<JoinHandle<()>>,
    /// How long a sync takes, in microseconds: the slowest recent one (each sync that is not
    /// slower lowers it by a sixteenth).
    took_micros: Arc<AtomicU64>,
}

fn note_took(took: &AtomicU64, start: Instant) {
    let micros = start.elapsed().as_micros() as u64;
    let old = took.load(Ordering::Relaxed);
    took.store(micros.max(old - old / 16), Ordering::Relaxed);
}

/// The longest [`Syncer::lead`]: a disk slower than this costs pace, not unknown rows.
const LEAD_MAX: Duration = Duration::from_millis(500);

impl Syncer {
    /// Starts syncing `file`, a handle to the journal's file of its own. Nothing of it is taken
    /// to be on disk yet: what an earlier run wrote may still be only in the OS's cache.
    pub(crate) fn start(file: File) -> io::Result<Syncer> {
        Syncer::with(move || file.sync_data())
    }

    /// The syncer with `sync` in place of `fdatasync` (the tests count and fail syncs).
    fn with(mut sync: impl FnMut() -> io::Result<()> + Send + 'static) -> io::Result<Syncer> {
        let (wanted, targets) = mpsc::channel::<u64>();
        let progress = Arc::new(Mutex::new(Progress::default()));
        let publish = progress.clone();
        let took_micros = Arc::new(AtomicU64::new(0));
        let took = took_micros.clone();
        let thread = std::thread::Builder::new()
            .name("results-sync".into())
            .spawn(move || {
                // One sync first, so the first rows know what a sync costs here.
                let start = Instant::now();
                if sync().is_ok() {
                    note_took(&took, start);
                }
                // Ends when the sender is dropped (the journal is), or on the first failure.
                while let Ok(first) = targets.recv() {
                    // Every line whose end was sent before now was written before this sync.
                    let target = targets.try_iter().fold(first, u64::max);
                    let start = Instant::now();
                    match sync() {
                        Ok(()) => {
                            note_took(&took, start);
                            let mut p = publish.lock().expect("sync progress lock");
                            p.through = p.through.max(target);
                            p.wake();
                        }
                        Err(e) => {
                            tracing::debug!("syncing the results file failed: {e}");
                            let mut p = publish.lock().expect("sync progress lock");
                            p.failed = Some((e.kind(), e.to_string()));
                            p.wake();
                            return;
                        }
                    }
                }
            })?;
        Ok(Syncer {
            wanted: Some(wanted),
            progress,
            thread: Some(thread),
            took_micros,
        })
    }

    /// How long before its request's time a row should ask for its line to be on disk: a line
    /// written now waits for the sync in progress and then its own, so twice what a slow sync
    /// takes (plus 2 ms), at most half a second.
    pub(crate) fn lead(&self) -> Duration {
        let micros = self.took_micros.load(Ordering::Relaxed);
        (Duration::from_micros(micros * 2) + Duration::from_millis(2)).min(LEAD_MAX)
    }

    /// Asks for the bytes before `end` to be put on disk. Cheap (a channel send); after a
    /// failure the thread is gone and the request is ignored ([`reached`](Self::reached) says
    /// why).
    pub(crate) fn request(&self, end: u64) {
        if let Some(wanted) = &self.wanted {
            let _ = wanted.send(end);
        }
    }

    /// Waits until every byte before `end` is on disk: `Ok` then, or the error of the sync that
    /// failed. `end` must have been [`request`](Self::request)ed, or this waits for a later one.
    pub(crate) async fn reached(&self, end: u64) -> io::Result<()> {
        let woken = {
            let mut p = self.progress.lock().expect("sync progress lock");
            if let Some(answer) = p.answer(end) {
                return answer;
            }
            let (wake, woken) = oneshot::channel();
            p.waiters.push((end, wake));
            woken
        };
        // Woken (its sender dropped) by the sync that covers `end` or by a failure; or the
        // thread ended with the waiter still listed, which a live journal's does only after a
        // failure.
        let _ = woken.await;
        let p = self.progress.lock().expect("sync progress lock");
        p.answer(end)
            .unwrap_or_else(|| Err(io::Error::other("cannot sync it to disk: the syncer ended")))
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.wanted.take());
        if let Some(thread) = self.thread.take() {
            // At most the sync in progress is waited for; a panic in it has nothing to say here.
            let _ = thread.join();
        }
    }
}

/// Puts `dir`'s entries on disk: after a file was created in it or renamed into it, that name
/// survives a power cut only once its folder is synced. Filesystems that cannot sync a folder
/// (`fsync` on a directory fails with EINVAL or ENOTSUP: some network and FUSE filesystems)
/// are let be: there is no way to do better on them.
pub(crate) fn sync_folder(dir: &Path) -> io::Result<()> {
    let folder = File::open(dir)?;
    match folder.sync_all() {
        // EINVAL and ENOTSUP / EOPNOTSUPP, as std names them.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            tracing::debug!(
                "{}: the filesystem cannot sync a folder: {e}",
                dir.display()
            );
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    #[tokio::test]
    async fn one_sync_covers_every_line_written_before_it() {
        // The first sync blocks until 15 more lines are written; the second covers all of them.
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Barrier::new(2));
        let syncer = {
            let (calls, gate) = (calls.clone(), gate.clone());
            Syncer::with(move || {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    gate.wait(); // in the first sync
                    gate.wait(); // released
                }
                Ok(())
            })
            .unwrap()
        };
        syncer.reached(0).await.unwrap(); // nothing to wait for: no sync
        syncer.request(20);
        gate.wait();
        for end in (30..=170).step_by(10) {
            syncer.request(end);
        }
        gate.wait();
        syncer.reached(20).await.unwrap();
        syncer.reached(170).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "16 lines, two syncs");
    }

    #[tokio::test]
    async fn a_sync_wakes_the_rows_it_covers_and_no_other() {
        // Each sync waits for the test's go; the rows waiting for 10, 20 and 30 are listed.
        let (go, gate) = mpsc::sync_channel::<()>(0);
        let syncer = Arc::new(
            Syncer::with(move || {
                gate.recv().ok();
                Ok(())
            })
            .unwrap(),
        );
        go.send(()).unwrap(); // the first sync, at start
        let waiting = |end| {
            let syncer = syncer.clone();
            tokio::spawn(async move { syncer.reached(end).await })
        };
        let (ten, twenty, thirty) = (waiting(10), waiting(20), waiting(30));
        let listed = || syncer.progress.lock().unwrap().waiters.len();
        while listed() < 3 {
            tokio::task::yield_now().await;
        }
        syncer.request(20);
        go.send(()).unwrap();
        ten.await.unwrap().unwrap();
        twenty.await.unwrap().unwrap();
        assert_eq!(
            listed(),
            1,
            "the row waiting for 30 is still listed, not woken"
        );
        assert!(!thirty.is_finished());
        syncer.request(30);
        go.send(()).unwrap();
        thirty.await.unwrap().unwrap();
        assert_eq!(listed(), 0);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_wait_then_and_after() {
        let syncer = Syncer::with(|| Err(io::Error::from_raw_os_error(5))).unwrap();
        syncer.request(100);
        let e = syncer.reached(100).await.unwrap_err();
        assert!(e.to_string().contains("Input/output error"), "{e}");
        // The thread is gone: later lines are never on disk, and their waits fail at once.
        syncer.request(200);
        assert!(syncer.reached(200).await.is_err());
    }

    #[tokio::test]
    async fn dropping_it_ends_the_thread() {
        // The thread owns the sync function: once it has ended, only this test holds `alive`.
        let alive = Arc::new(());
        let syncer = {
            let alive = alive.clone();
            Syncer::with(move || {
                let _ = &alive;
                Ok(())
            })
            .unwrap()
        };
        syncer.request(5);
        syncer.reached(5).await.unwrap();
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(syncer);
        assert_eq!(
            Arc::strong_count(&alive),
            1,
            "the thread ended before drop returned"
        );
    }
}

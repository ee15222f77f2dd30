//! Where the input's bytes come from, and what they are, up to the UTF-8 text the CSV reader
//! parses. It owns:
//!
//! - **the origin**: a file, `-` for stdin, or a stream that can be read only once (a FIFO,
//!   `<(zcat export.csv.gz)`, a character device). A run reads its input twice (the pass before
//!   sending, then the import): a stream is read once, and every byte read is also written to
//!   an anonymous temp file beside the results file (`O_TMPFILE`: no name, so a `kill -9` or a
//!   power cut can leave nothing behind to sweep), which the second read takes instead. The
//!   stream is read on a thread of its own into a bounded channel, so memory stays flat and a
//!   read that blocks (a FIFO whose writer stalls) never keeps Ctrl-C or SIGTERM from ending
//!   the run.
//! - **compression**, told by the magic bytes, not the name: gzip (also several members, as
//!   `cat a.gz b.gz` makes) and zstd are decompressed as they are read; ZIP (an `.xlsx`
//!   workbook), bzip2 and xz are refused with what to do instead. A spool keeps the stream as it
//!   came, compressed or not: a CSV export compresses 5–10 times, and decompressing is cheap
//!   beside parsing.
//! - **the encoding**: UTF-8 by default (a UTF-8 BOM is dropped by the CSV reader); UTF-16 LE or
//!   BE told by its BOM; any WHATWG label `encoding_rs` knows given with `--encoding`, decoded
//!   to UTF-8 as the stream is read. A file that looks like UTF-16 without a BOM is refused with
//!   an error that says so and names `--encoding`. Cells that are not UTF-8 are row errors of
//!   the mapping; `reader::Utf8Hint` turns them into one file-level hint when they read as
//!   Windows-1252. Bytes that do not decode in the encoding named are read as U+FFFD and
//!   counted; the reader makes the rows that hold them row errors.
//! - **old-Mac line ends**: a file whose first line ends in a lone CR has its CRs read as LFs.
//! - **how much was read**: bytes of the decompressed stream, for progress while the total is
//!   unknown.
//! - **a text that can be sought in** ([`Source::seekable_text`], for `--order date`, whose
//!   import reads rows at the byte offsets the pass saw): a plain UTF-8 file is read again as
//!   it is; any other input (a stream, compressed, another encoding, CR line ends) has the
//!   UTF-8 text of its first read copied into an anonymous temp file beside the results file,
//!   and the later reads read that copy, whose offsets are those the pass saw. The copy
//!   replaces the stream's spool (it is the text, not the bytes as they came, so it is the size
//!   of the decompressed text).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use encoding_rs::Encoding;
use tokio_util::sync::CancellationToken;

mod decode;

use decode::decode;

/// What the reader asks of the input: UTF-8 text, read once per [`Source::open`]. Only a
/// [`Text::File`] can be sought in (see [`Source::seekable_text`]).
pub enum Text {
    /// Decoded as it is read (a stream, or a first read).
    Stream(Box<dyn Read + Send>),
    /// UTF-8 text in a file: the input itself, or the copy of an earlier read's text.
    File(File),
}

impl Read for Text {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Text::Stream(r) => r.read(out),
            Text::File(f) => f.read(out),
        }
    }
}

impl Seek for Text {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match self {
            Text::File(f) => f.seek(to),
            Text::Stream(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the input is read as a stream here: it cannot be sought in",
            )),
        }
    }
}

/// How a later read of the input can be sought in (when [`Source::seekable_text`] asks it).
enum Again {
    /// Not asked for, or not yet known (before the first read).
    Unknown,
    /// The input file is plain UTF-8 text: read it again as it is.
    AsIs,
    /// The first read's text, copied as it was read; `complete` once it went to the end.
    Copy {
        file: File,
        complete: Arc<AtomicBool>,
    },
}

/// The input of a command, as named on its command line.
pub struct Source {
    /// As the user wrote it (`-` for stdin).
    name: PathBuf,
    origin: Origin,
    /// `--encoding`; `None`: UTF-8, or UTF-16 by its BOM.
    encoding: Option<&'static Encoding>,
    /// Where a stream is spooled when it is to be read again (the results file's folder).
    spool_dir: Option<PathBuf>,
    /// Where the first read's text is copied when later reads must be seekable and the input is
    /// not plain UTF-8 text in a file; and what the later reads read.
    text_dir: Option<PathBuf>,
    /// Later reads are made seekable where that costs nothing: a plain UTF-8 file is read
    /// again as it is ([`Source::seekable_if_free`]).
    text_if_free: bool,
    again: Again,
    /// Ends a read that waits on a stream (Ctrl-C, SIGTERM).
    stop: Option<CancellationToken>,
    /// Bytes of the decompressed stream read so far, by the read now going on.
    read: Arc<AtomicU64>,
    /// Byte sequences the decoder of `--encoding` (or UTF-16) could not decode, each written
    /// as U+FFFD, by the read now going on.
    replaced: Arc<AtomicU64>,
}

enum Origin {
    /// A regular file: opened afresh for every read.
    File,
    /// Stdin, or a FIFO / process substitution / device: it can be read only once.
    Stream { stdin: bool },
    /// A stream read once, its bytes in an anonymous temp file; `complete` once it was read to
    /// its end.
    Spooled {
        file: File,
        complete: Arc<AtomicBool>,
    },
    /// A stream read once without a spool.
    Consumed,
}

/// Whether `path` names a stream (`-`, a FIFO, `<(…)`, a device), not a file: its name is not
/// stable from run to run, and no results file can be named after it.
pub fn is_stream(path: &Path) -> bool {
    path == Path::new("-") || std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// `--encoding LABEL`: the encoding a WHATWG label names (`windows-1252`, `latin1`,
/// `iso-8859-15`, `utf-16le`, `shift_jis`, …), as `encoding_rs` knows them.
pub fn encoding(label: &str) -> Result<&'static Encoding> {
    match Encoding::for_label(label.trim().as_bytes()) {
        Some(e) if e != encoding_rs::REPLACEMENT => Ok(e),
        _ => bail!(
            "--encoding '{label}' is not an encoding label: expected a WHATWG label such as utf-8, windows-1252 (Excel on Windows), iso-8859-1, iso-8859-15, macintosh, utf-16le, utf-16be, shift_jis, gbk"
        ),
    }
}

impl Source {
    /// The input named `name` (`-`: stdin). A name that is missing or a folder is an error.
    pub fn new(name: &Path, encoding: Option<&'static Encoding>) -> Result<Source> {
        let origin = if name == Path::new("-") {
            Origin::Stream { stdin: true }
        } else {
            let meta = std::fs::metadata(name)
                .with_context(|| format!("cannot open input {}", name.display()))?;
            if meta.is_dir() {
                bail!(
                    "cannot open input {}: it is a folder; expected a CSV file",
                    name.display()
                );
            }
            match meta.is_file() {
                true => Origin::File,
                false => Origin::Stream { stdin: false },
            }
        };
        Ok(Source {
            name: name.to_owned(),
            origin,
            encoding,
            spool_dir: None,
            text_dir: None,
            text_if_free: false,
            again: Again::Unknown,
            stop: None,
            read: Arc::default(),
            replaced: Arc::default(),
        })
    }

    /// A stream is spooled into `dir` by its first read, so that it can be read again.
    pub fn spool_in(mut self, dir: &Path) -> Source {
        self.spool_dir = Some(dir.to_owned());
        self
    }

    /// Reads after the first give a [`Text::File`], which can be sought in, with the byte
    /// offsets of the first read's text: the input file itself when it is plain UTF-8, else a
    /// copy of the first read's text in an anonymous temp file in `dir` (it takes the place of
    /// a stream's spool).
    pub fn seekable_text(mut self, dir: &Path) -> Source {
        self.text_dir = Some(dir.to_owned());
        self
    }

    /// Later reads can be sought in when that is free: the input is a plain UTF-8 file, read
    /// again as it is; anything else is read again as without this (no copy is made).
    /// [`Source::seekable_again`] tells, after the first read, which it was.
    pub fn seekable_if_free(mut self) -> Source {
        self.text_if_free = true;
        self
    }

    /// Whether later reads can be sought in (known once the first read has begun).
    pub fn seekable_again(&self) -> bool {
        !matches!(self.again, Again::Unknown)
    }

    /// A read that waits on a stream ends with an error once `stop` is cancelled.
    pub fn stop_on(mut self, stop: CancellationToken) -> Source {
        self.stop = Some(stop);
        self
    }

    /// The input as named.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// Bytes of the (decompressed) stream read so far by the latest read.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    /// How many byte sequences the latest read could not decode (each read as U+FFFD); 0 for
    /// UTF-8, which is not decoded but checked cell by cell.
    pub fn replacements(&self) -> Arc<AtomicU64> {
        self.replaced.clone()
    }

    /// The encoding the latest read decodes from, when it is not UTF-8 (for error messages).
    pub fn encoding_name(&self) -> &'static str {
        self.encoding.map_or("UTF-16", Encoding::name)
    }

    /// One read of the input, as UTF-8 text. A stream can be read again only when it was
    /// spooled ([`Source::spool_in`]) and its first read went to the end.
    pub fn open(&mut self) -> Result<Text> {
        self.read.store(0, Ordering::Relaxed);
        match &self.again {
            Again::Unknown => {}
            Again::AsIs => {
                return Ok(Text::File(File::open(&self.name).with_context(|| {
                    format!("cannot open input {}", self.name.display())
                })?));
            }
            Again::Copy { file, complete } => {
                // `replaced` keeps the first read's count: the copy holds its U+FFFDs, and the
                // rows holding them are still row errors.
                return Ok(Text::File(self.reread(file, complete)?));
            }
        }
        self.replaced.store(0, Ordering::Relaxed);
        let raw: Box<dyn Read + Send> = match &self.origin {
            Origin::File => Box::new(
                File::open(&self.name)
                    .with_context(|| format!("cannot open input {}", self.name.display()))?,
            ),
            Origin::Stream { stdin } => {
                // A copy of the text is to be made: it is the second read, not a spool.
                let spool_dir = self.spool_dir.as_ref().filter(|_| self.text_dir.is_none());
                let spool = match spool_dir {
                    None => None,
                    Some(dir) => Some(tempfile::tempfile_in(dir).with_context(|| {
                        format!(
                            "cannot create a temp file in {} to keep a copy of the input {} (a stream can be read only once, and the run reads it twice)",
                            dir.display(),
                            self.name.display()
                        )
                    })?),
                };
                let complete = Arc::new(AtomicBool::new(false));
                let pumped = pump(
                    self.name.clone(),
                    *stdin,
                    spool.as_ref().map(File::try_clone).transpose()?,
                    complete.clone(),
                    self.stop.clone(),
                )?;
                self.origin = match spool {
                    Some(file) => Origin::Spooled { file, complete },
                    None => Origin::Consumed,
                };
                Box::new(pumped)
            }
            Origin::Spooled { file, complete } => Box::new(self.reread(file, complete)?),
            Origin::Consumed => bail!(
                "{} is a stream and was read already: it cannot be read again",
                self.name.display()
            ),
        };
        let decoded = decode(
            raw,
            &self.name,
            self.encoding,
            self.read.clone(),
            self.replaced.clone(),
        )?;
        let Some(dir) = &self.text_dir else {
            if self.text_if_free && decoded.as_is && matches!(self.origin, Origin::File) {
                self.again = Again::AsIs;
            }
            return Ok(Text::Stream(decoded.text));
        };
        if decoded.as_is && matches!(self.origin, Origin::File) {
            self.again = Again::AsIs;
            return Ok(Text::Stream(decoded.text));
        }
        let file = tempfile::tempfile_in(dir).with_context(|| {
            format!(
                "cannot create a temp file in {} to keep the text of the input {} (--order date reads its rows again, in another order)",
                dir.display(),
                self.name.display()
            )
        })?;
        let complete = Arc::new(AtomicBool::new(false));
        let copy = BufWriter::with_capacity(PUMP_CHUNK, file.try_clone()?);
        self.again = Again::Copy {
            file,
            complete: complete.clone(),
        };
        Ok(Text::Stream(Box::new(Copied {
            inner: decoded.text,
            copy: Some(copy),
            complete,
        })))
    }
}

impl Source {
    /// The temp copy made by the first read, from its start, once that read went to the end.
    fn reread(&self, file: &File, complete: &AtomicBool) -> Result<File> {
        if !complete.load(Ordering::Acquire) {
            bail!(
                "{} was not read to its end the first time: it cannot be read again",
                self.name.display()
            );
        }
        let mut file = file.try_clone().context("reading the input's temp copy")?;
        file.seek(SeekFrom::Start(0))
            .context("reading the input's temp copy")?;
        Ok(file)
    }
}

/// A read whose text is also written to a copy; the copy is `complete` once the read met the
/// end of the text and the copy was written out.
struct Copied {
    inner: Box<dyn Read + Send>,
    copy: Option<BufWriter<File>>,
    complete: Arc<AtomicBool>,
}

impl Read for Copied {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        let copying = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("writing the input's text to its temp copy: {e}"),
            )
        };
        if let Some(copy) = self.copy.as_mut() {
            copy.write_all(&out[..n]).map_err(copying)?;
            if n == 0 {
                copy.flush().map_err(copying)?;
                self.copy = None;
                self.complete.store(true, Ordering::Release);
            }
        }
        Ok(n)
    }
}

/// How many chunks of a stream wait in memory for the reader.
const PUMP_CHUNKS: usize = 8;
/// Bytes read from a stream at once.
pub(crate) const PUMP_CHUNK: usize = 64 * 1024;
/// How often a reader waiting on a stream looks at the stop.
const STOP_POLL: Duration = Duration::from_millis(100);

enum Chunk {
    Bytes(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Reads the stream on a thread of its own (opening a FIFO blocks until its writer comes, and
/// a read blocks while the writer stalls), copying every byte to `spool` first.
fn pump(
    name: PathBuf,
    stdin: bool,
    spool: Option<File>,
    complete: Arc<AtomicBool>,
    stop: Option<CancellationToken>,
) -> Result<Pumped> {
    let (tx, rx) = mpsc::sync_channel(PUMP_CHUNKS);
    let shown = name.display().to_string();
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            let mut input: Box<dyn Read> = if stdin {
                Box::new(io::stdin().lock())
            } else {
                match File::open(&name) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        let _ = tx.send(Chunk::Failed(e));
                        return;
                    }
                }
            };
            let mut spool = spool.map(|f| io::BufWriter::with_capacity(PUMP_CHUNK, f));
            loop {
                let mut buf = vec![0u8; PUMP_CHUNK];
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.send(Chunk::Failed(e));
                        return;
                    }
                };
                buf.truncate(n);
                if let Some(spool) = spool.as_mut()
                    && let Err(e) = io::Write::write_all(spool, &buf)
                {
                    let _ = tx.send(Chunk::Failed(io::Error::new(
                        e.kind(),
                        format!("writing the input's temp copy: {e}"),
                    )));
                    return;
                }
                if tx.send(Chunk::Bytes(buf)).is_err() {
                    // The reader is gone (the run stopped): nothing more to read for.
                    return;
                }
            }
            if let Some(spool) = spool {
                if let Err(e) = spool.into_inner().map_err(|e| e.into_error()) {
                    let _ = tx.send(Chunk::Failed(io::Error::new(
                        e.kind(),
                        format!("writing the input's temp copy: {e}"),
                    )));
                    return;
                }
                complete.store(true, Ordering::Release);
            }
            let _ = tx.send(Chunk::End);
        })
        .with_context(|| format!("starting a thread to read {shown}"))?;
    Ok(Pumped {
        rx,
        chunk: Vec::new(),
        at: 0,
        ended: false,
        stop,
    })
}

/// The reading end of [`pump`].
struct Pumped {
    rx: mpsc::Receiver<Chunk>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
    stop: Option<CancellationToken>,
}

impl Read for Pumped {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            if self.stop.as_ref().is_some_and(|s| s.is_cancelled()) {
                return Err(io::Error::other("interrupted"));
            }
            match self.rx.recv_timeout(STOP_POLL) {
                Ok(Chunk::Bytes(b)) => (self.chunk, self.at) = (b, 0),
                Ok(Chunk::End) => self.ended = true,
                Ok(Chunk::Failed(e)) => return Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("the input's reader thread ended"));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(source: &mut Source) -> Vec<u8> {
        let mut out = Vec::new();
        source.open().unwrap().read_to_end(&mut out).unwrap();
        out
    }

    /// A second read for `--order date` is a file with the first read's text: the decoded
    /// text (not the file's bytes), its bytes that did not decode still counted.
    #[test]
    fn a_seekable_second_read_is_the_first_reads_text() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        // Shift_JIS: "a,b\n" then a cell with a valid pair and a lead byte with no trail.
        std::fs::write(&input, b"a,b\n\x82\xa0,x\x81\n").unwrap();
        let mut source = Source::new(&input, Some(encoding_rs::SHIFT_JIS))
            .unwrap()
            .seekable_text(dir.path());
        let first = read_all(&mut source);
        assert_eq!(first, "a,b\n\u{3042},x\u{fffd}\n".as_bytes());
        assert_eq!(source.replacements().load(Ordering::Relaxed), 1);
        let mut again = source.open().unwrap();
        assert!(matches!(again, Text::File(_)));
        again.seek(SeekFrom::Start(4)).unwrap();
        let mut rest = Vec::new();
        again.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, &first[4..]);
        assert_eq!(source.replacements().load(Ordering::Relaxed), 1);
        // Plain UTF-8 is read again from the file itself; a first read as a stream.
        std::fs::write(&input, b"a,b\n1,2\n").unwrap();
        let mut plain = Source::new(&input, None).unwrap().seekable_text(dir.path());
        assert!(matches!(plain.open().unwrap(), Text::Stream(_)));
        assert!(matches!(plain.open().unwrap(), Text::File(_)));
        assert_eq!(read_all(&mut plain), b"a,b\n1,2\n");
    }

    #[test]
    fn the_whatwg_labels_of_encoding_rs() {
        assert!(encoding("klingon").is_err());
        assert!(encoding("iso-2022-kr").is_err(), "the replacement encoding");
        assert_eq!(encoding("latin1").unwrap(), encoding_rs::WINDOWS_1252);
        assert_eq!(encoding(" UTF-16LE ").unwrap(), encoding_rs::UTF_16LE);
    }
}

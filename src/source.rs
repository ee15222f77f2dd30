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
//!   the mapping; [`Utf8Hint`] turns them into one file-level hint when they read as
//!   Windows-1252. Bytes that do not decode in the encoding named are read as U+FFFD and
//!   counted; the reader makes the rows that hold them row errors.
//! - **old-Mac line ends**: a file whose first line ends in a lone CR has its CRs read as LFs.
//! - **how much was read**: bytes of the decompressed stream, for progress while the total is
//!   unknown.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE, WINDOWS_1252};
use tokio_util::sync::CancellationToken;

use crate::reader::{Column, RowError};
use crate::validate::Problem;

/// What the reader asks of the input: text, read once per [`Source::open`].
pub type Text = Box<dyn Read + Send>;

/// The input of a command, as named on its command line.
pub struct Source {
    /// As the user wrote it (`-` for stdin).
    name: PathBuf,
    origin: Origin,
    /// `--encoding`; `None`: UTF-8, or UTF-16 by its BOM.
    encoding: Option<&'static Encoding>,
    /// Where a stream is spooled when it is to be read again (the results file's folder).
    spool_dir: Option<PathBuf>,
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
        self.replaced.store(0, Ordering::Relaxed);
        let raw: Box<dyn Read + Send> = match &self.origin {
            Origin::File => Box::new(
                File::open(&self.name)
                    .with_context(|| format!("cannot open input {}", self.name.display()))?,
            ),
            Origin::Stream { stdin } => {
                let spool = match &self.spool_dir {
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
            Origin::Spooled { file, complete } => {
                if !complete.load(Ordering::Acquire) {
                    bail!(
                        "{} was not read to its end the first time: it cannot be read again",
                        self.name.display()
                    );
                }
                let mut file = file.try_clone().context("reading the input's temp copy")?;
                file.seek(SeekFrom::Start(0))
                    .context("reading the input's temp copy")?;
                Box::new(file)
            }
            Origin::Consumed => bail!(
                "{} is a stream and was read already: it cannot be read again",
                self.name.display()
            ),
        };
        decode(
            raw,
            &self.name,
            self.encoding,
            self.read.clone(),
            self.replaced.clone(),
        )
    }
}

/// How many chunks of a stream wait in memory for the reader.
const PUMP_CHUNKS: usize = 8;
/// Bytes read from a stream at once.
const PUMP_CHUNK: usize = 64 * 1024;
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

/// How many bytes are looked at to tell the format, the encoding and the line ends.
const SNIFF: usize = 64 * 1024;

/// Raw bytes → decompressed → counted → decoded to UTF-8 → CRs as LFs when the file has
/// old-Mac line ends.
fn decode(
    raw: Box<dyn Read + Send>,
    name: &Path,
    encoding: Option<&'static Encoding>,
    counter: Arc<AtomicU64>,
    replaced: Arc<AtomicU64>,
) -> Result<Text> {
    let context = || format!("cannot read input {}", name.display());
    let raw = Peeked::fill(raw, 4).with_context(context)?;
    let decompressed: Box<dyn Read + Send> = match compression(raw.head()) {
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(
            BufReader::with_capacity(PUMP_CHUNK, raw),
        )),
        Some(Compression::Zstd) => Box::new(zstd::Decoder::new(raw).with_context(context)?),
        Some(Compression::Refused(what)) => bail!("{}: {what}", name.display()),
        None => Box::new(raw),
    };
    let counted = Counted {
        inner: decompressed,
        counter,
    };
    let text = Peeked::fill(counted, SNIFF).with_context(context)?;
    let chosen = match (encoding, bom(text.head())) {
        (_, Some(bom)) => bom,
        (Some(e), None) => e,
        (None, None) => {
            if let Some(utf16) = looks_like_utf16(text.head()) {
                bail!(
                    "{} looks like {} text without a byte-order mark (a NUL byte beside most characters), not UTF-8: give its encoding with --encoding {}",
                    name.display(),
                    utf16.name(),
                    utf16.name().to_ascii_lowercase()
                );
            }
            UTF_8
        }
    };
    let utf8: Box<dyn Read + Send> = if chosen == UTF_8 {
        // As it is: the CSV reader drops a UTF-8 BOM, and a cell that is not UTF-8 is reported
        // by the mapping with its line and column rather than replaced.
        Box::new(text)
    } else {
        // A BOM of the file wins over --encoding (as WHATWG decoding does) and is removed.
        Box::new(BufReader::with_capacity(
            256 * 1024,
            Transcode {
                inner: text,
                decoder: chosen.new_decoder(),
                buf: vec![0; PUMP_CHUNK].into_boxed_slice(),
                start: 0,
                end: 0,
                eof: false,
                done: false,
                replaced,
            },
        ))
    };
    let utf8 = Peeked::fill(utf8, SNIFF).with_context(context)?;
    Ok(match cr_line_ends(utf8.head()) {
        true => Box::new(CrAsLf(utf8)),
        false => Box::new(utf8),
    })
}

enum Compression {
    Gzip,
    Zstd,
    /// A format not read: what to do instead.
    Refused(&'static str),
}

fn compression(head: &[u8]) -> Option<Compression> {
    Some(match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [b'P', b'K', 3, 4, ..] => Compression::Refused(
            "this is a ZIP archive (an Excel .xlsx workbook, or a zipped export), not CSV: save the sheet as CSV (UTF-8), or unzip the export, and give that file",
        ),
        [b'B', b'Z', b'h', ..] => Compression::Refused(
            "this is bzip2-compressed: decompress it on the way in (bzip2 -dc FILE | lc-import run - --results PATH), or give a .gz or .zst file, which are read as they are",
        ),
        [0xfd, b'7', b'z', b'X', ..] => Compression::Refused(
            "this is xz-compressed: decompress it on the way in (xz -dc FILE | lc-import run - --results PATH), or give a .gz or .zst file, which are read as they are",
        ),
        _ => return None,
    })
}

/// The encoding a byte-order mark at the start names, UTF-16 only (a UTF-8 BOM is the CSV
/// reader's to drop, and changes nothing).
fn bom(head: &[u8]) -> Option<&'static Encoding> {
    match head {
        [0xff, 0xfe, ..] => Some(UTF_16LE),
        [0xfe, 0xff, ..] => Some(UTF_16BE),
        _ => None,
    }
}

/// UTF-16 without a BOM: text of mostly ASCII characters has a NUL in every other byte (after
/// each character in LE, before it in BE), which UTF-8 text never has.
fn looks_like_utf16(head: &[u8]) -> Option<&'static Encoding> {
    let pairs = head.len() / 2;
    if pairs < 2 {
        return None;
    }
    let (mut even, mut odd) = (0usize, 0usize);
    for pair in head.chunks_exact(2) {
        even += usize::from(pair[0] == 0);
        odd += usize::from(pair[1] == 0);
    }
    let most = pairs * 3 / 10;
    let few = pairs / 20;
    match (even, odd) {
        (e, o) if o > most && e <= few => Some(UTF_16LE),
        (e, o) if e > most && o <= few => Some(UTF_16BE),
        _ => None,
    }
}

/// Whether the first line ends in a lone CR (old Mac OS, some Excel exports for Mac): then no
/// LF ends a line, and the CSV reader (which takes `\n` as the line end) would see one row.
fn cr_line_ends(head: &[u8]) -> bool {
    match head.iter().position(|b| *b == b'\r' || *b == b'\n') {
        Some(i) => head[i] == b'\r' && head.get(i + 1) != Some(&b'\n'),
        None => false,
    }
}

/// A reader with its first bytes read ahead, to be looked at, then given out first.
struct Peeked<R> {
    head: Vec<u8>,
    at: usize,
    inner: R,
}

impl<R: Read> Peeked<R> {
    /// Reads up to `n` bytes ahead (fewer at the end of the input).
    fn fill(mut inner: R, n: usize) -> io::Result<Self> {
        let mut head = vec![0; n];
        let mut len = 0;
        while len < n {
            match inner.read(&mut head[len..]) {
                Ok(0) => break,
                Ok(k) => len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(len);
        Ok(Peeked { head, at: 0, inner })
    }

    fn head(&self) -> &[u8] {
        &self.head
    }
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at < self.head.len() {
            let n = out.len().min(self.head.len() - self.at);
            out[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Ok(n);
        }
        self.inner.read(out)
    }
}

/// Counts the bytes that pass.
struct Counted<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Text in another encoding, decoded to UTF-8 as it is read (`encoding_rs`'s streaming
/// decoder: what does not decode becomes U+FFFD, as browsers read it, and is counted, so that
/// the reader can refuse the rows that hold it). Read through a `BufReader`, which always asks
/// for more than the 4 bytes a character may take.
struct Transcode<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
    /// Counts the sequences that did not decode.
    replaced: Arc<AtomicU64>,
}

impl<R: Read> Read for Transcode<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.len() < 4 {
            return Err(io::Error::other("decoding needs room for a character"));
        }
        loop {
            if self.done {
                return Ok(0);
            }
            if self.start == self.end && !self.eof {
                match self.inner.read(&mut self.buf) {
                    Ok(0) => self.eof = true,
                    Ok(n) => (self.start, self.end) = (0, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let (result, read, written, replaced) =
                self.decoder
                    .decode_to_utf8(&self.buf[self.start..self.end], out, self.eof);
            self.start += read;
            if replaced {
                self.replaced.fetch_add(1, Ordering::Relaxed);
            }
            if self.eof && matches!(result, encoding_rs::CoderResult::InputEmpty) {
                self.done = true;
            }
            if written > 0 {
                return Ok(written);
            }
        }
    }
}

/// Old-Mac line ends: every CR read as an LF.
struct CrAsLf<R>(R);

impl<R: Read> Read for CrAsLf<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(out)?;
        for b in &mut out[..n] {
            if *b == b'\r' {
                *b = b'\n';
            }
        }
        Ok(n)
    }
}

/// Cells that are not UTF-8 (each a row error of the mapping) turned into one hint for the
/// file: when they read as Windows-1252 (letters and punctuation, no control characters), the
/// export is most likely that, and `--encoding windows-1252` reads it.
#[derive(Debug, Default)]
pub struct Utf8Hint {
    /// Rows with a cell that is not UTF-8.
    rows: u64,
    /// The first such cell: where, and its text read as Windows-1252.
    first: Option<(String, String)>,
    /// Every such cell read as Windows-1252 text.
    all_1252: bool,
}

impl Utf8Hint {
    /// Takes note of a row's errors: the cells that are not UTF-8 among them.
    pub fn observe(&mut self, cells: &csv::ByteRecord, errors: &[RowError]) {
        let mut counted = false;
        for e in errors {
            let (Problem::Encoding, Some(Column::Csv(i, name))) = (e.invalid.problem, &e.column)
            else {
                continue;
            };
            let Some(bytes) = cells.get(*i) else {
                continue;
            };
            let (text, _) = WINDOWS_1252.decode_without_bom_handling(bytes);
            let readable = !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
            if self.first.is_none() {
                self.all_1252 = true;
                self.first = Some((
                    format!("line {}, column {} ({name})", e.line, i + 1),
                    text.into_owned(),
                ));
            }
            self.all_1252 &= readable;
            if !counted {
                self.rows += 1;
                counted = true;
            }
        }
    }

    /// The hint for `input`, when some cell was not UTF-8.
    pub fn render(&self, input: &Path) -> Option<String> {
        let (at, text) = self.first.as_ref()?;
        let mut shown: String = text.chars().take(60).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        Some(if self.all_1252 {
            format!(
                "{}: {} row(s) have cells that are not UTF-8, and they read as Windows-1252 ({at}: {shown:?}): the export is most likely Windows-1252 (Excel on Windows); run again with --encoding windows-1252",
                input.display(),
                self.rows
            )
        } else {
            format!(
                "{}: {} row(s) have cells that are not UTF-8 (first at {at}): give the export's encoding with --encoding LABEL (windows-1252, iso-8859-15, macintosh, shift_jis, …), or save it as UTF-8",
                input.display(),
                self.rows
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], encoding: Option<&'static Encoding>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        decode(
            Box::new(io::Cursor::new(bytes.to_vec())),
            Path::new("x.csv"),
            encoding,
            Arc::default(),
            Arc::default(),
        )?
        .read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn encodings_by_label_and_by_bom() {
        let text = "a,b\n\"Café “quoted” 5 €\",x\n";
        // Windows-1252, only with the label.
        let (cp1252, _, _) = WINDOWS_1252.encode(text);
        assert_eq!(
            read_all(&cp1252, Some(encoding("windows-1252").unwrap())).unwrap(),
            text.as_bytes()
        );
        assert_ne!(read_all(&cp1252, None).unwrap(), text.as_bytes());
        // UTF-16 by its BOM, LE and BE, the BOM removed; over many chunks.
        let long = text.repeat(20_000);
        for (bom, big) in [([0xff, 0xfe], false), ([0xfe, 0xff], true)] {
            let mut bytes = bom.to_vec();
            for unit in long.encode_utf16() {
                bytes.extend(if big {
                    unit.to_be_bytes()
                } else {
                    unit.to_le_bytes()
                });
            }
            assert_eq!(read_all(&bytes, None).unwrap(), long.as_bytes());
        }
        assert!(encoding("klingon").is_err());
        assert!(encoding("iso-2022-kr").is_err(), "the replacement encoding");
        assert_eq!(encoding("latin1").unwrap(), WINDOWS_1252);
    }

    #[test]
    fn utf16_without_a_bom_is_named() {
        let text = "conversationId,message\nc1,hello there\n";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let e = read_all(&le, None).unwrap_err().to_string();
        assert!(
            e.contains("UTF-16LE") && e.contains("--encoding utf-16le"),
            "{e}"
        );
        let e = read_all(&be, None).unwrap_err().to_string();
        assert!(e.contains("--encoding utf-16be"), "{e}");
        // Named, it is read.
        assert_eq!(read_all(&le, Some(UTF_16LE)).unwrap(), text.as_bytes());
    }

    #[test]
    fn compressed_by_magic_bytes() {
        let text = b"a,b\n1,2\n".repeat(50_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &text).unwrap();
        let mut gz = gz.finish().unwrap();
        // Two members, as `cat a.gz b.gz` makes.
        gz.extend(gz.clone());
        let mut twice = text.clone();
        twice.extend(&text);
        assert_eq!(read_all(&gz, None).unwrap(), twice);
        let zst = zstd::encode_all(&text[..], 1).unwrap();
        assert_eq!(read_all(&zst, None).unwrap(), text);
        let e = read_all(b"PK\x03\x04rest", None).unwrap_err().to_string();
        assert!(e.contains("xlsx"), "{e}");
    }

    #[test]
    fn old_mac_line_ends_read_as_line_ends() {
        assert_eq!(read_all(b"a,b\r1,2\r", None).unwrap(), b"a,b\n1,2\n");
        // CRLF files are left to the reader.
        assert_eq!(
            read_all(b"a,b\r\n1,2\r\n", None).unwrap(),
            b"a,b\r\n1,2\r\n"
        );
    }
}

//! The bytes of one read, up to UTF-8 text: compression told by the magic bytes, the encoding
//! (a BOM, `--encoding`, or UTF-16 without a BOM refused), old-Mac line ends; the adapters that
//! do it as the stream is read, each holding at most one buffer.

use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE};

use super::PUMP_CHUNK;

/// How many bytes are looked at to tell the format, the encoding and the line ends.
const SNIFF: usize = 64 * 1024;

/// One read's text, and whether it is the raw bytes as they are (not compressed, UTF-8, line
/// ends left alone): then a byte offset in the text is one in the file.
pub(super) struct Decoded {
    pub text: Box<dyn Read + Send>,
    pub as_is: bool,
}

/// Raw bytes → decompressed → counted → decoded to UTF-8 → CRs as LFs when the file has
/// old-Mac line ends.
pub(super) fn decode(
    raw: Box<dyn Read + Send>,
    name: &Path,
    encoding: Option<&'static Encoding>,
    counter: Arc<AtomicU64>,
    replaced: Arc<AtomicU64>,
) -> Result<Decoded> {
    let context = || format!("cannot read input {}", name.display());
    let raw = Peeked::fill(raw, 4, |_| false).with_context(context)?;
    let compressed = compression(raw.head()).is_some();
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
    let text = Peeked::fill(counted, SNIFF, |head| {
        head.len() >= 512 && has_line_end(head)
    })
    .with_context(context)?;
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
    let utf8 = Peeked::fill(utf8, SNIFF, has_line_end).with_context(context)?;
    let cr = cr_line_ends(utf8.head());
    Ok(Decoded {
        as_is: !compressed && chosen == UTF_8 && !cr,
        text: match cr {
            true => Box::new(CrAsLf(utf8)),
            false => Box::new(utf8),
        },
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

/// A line end, and the byte after it (to tell a lone CR from a CRLF).
fn has_line_end(head: &[u8]) -> bool {
    head.iter()
        .position(|b| *b == b'\n' || *b == b'\r')
        .is_some_and(|i| i + 1 < head.len())
}

/// A reader with its first bytes read ahead, to be looked at, then given out first.
struct Peeked<R> {
    head: Vec<u8>,
    at: usize,
    inner: R,
}

impl<R: Read> Peeked<R> {
    /// Reads up to `n` bytes ahead, or until what was read is `enough` (a slow pipe is not
    /// waited on for more than it takes), or the end of the input. An error after some bytes
    /// ends the look ahead, not the read: nothing was taken, and the reader meets the error
    /// where it is (as it would without the look ahead, after the rows before it).
    fn fill(mut inner: R, n: usize, enough: impl Fn(&[u8]) -> bool) -> io::Result<Self> {
        let mut head = vec![0; n];
        let mut len = 0;
        while len < n && !enough(&head[..len]) {
            match inner.read(&mut head[len..]) {
                Ok(0) => break,
                Ok(k) => len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) if len > 0 => break,
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
        .text
        .read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn encodings_by_label_and_by_bom() {
        let text = "a,b\n\"Café “quoted” 5 €\",x\n";
        // Windows-1252, only with the label.
        let (cp1252, _, _) = encoding_rs::WINDOWS_1252.encode(text);
        assert_eq!(
            read_all(&cp1252, Some(encoding_rs::WINDOWS_1252)).unwrap(),
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

    /// A pipe that gives one byte per read, then fails after `fail_at` bytes, if set.
    struct Trickle(Vec<u8>, usize, Option<usize>);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.2 == Some(self.1) {
                return Err(io::Error::other("EIO"));
            }
            let Some(b) = self.0.get(self.1) else {
                return Ok(0);
            };
            out[0] = *b;
            self.1 += 1;
            Ok(1)
        }
    }

    fn trickled(bytes: &[u8], fail_at: Option<usize>) -> (Vec<u8>, io::Result<usize>) {
        let mut text = decode(
            Box::new(Trickle(bytes.to_vec(), 0, fail_at)),
            Path::new("x.csv"),
            None,
            Arc::default(),
            Arc::default(),
        )
        .unwrap()
        .text;
        let mut out = Vec::new();
        let end = text.read_to_end(&mut out);
        (out, end)
    }

    #[test]
    fn the_look_ahead_waits_for_no_more_than_it_needs() {
        // Byte by byte, a CRLF is still told from a lone CR.
        let crlf = b"a,b\r\n1,2\r\n".repeat(100);
        assert_eq!(trickled(&crlf, None).0, crlf);
        assert_eq!(trickled(b"a,b\r1,2\r", None).0, b"a,b\n1,2\n");
        // An error after the first rows is met after them, as without the look ahead.
        let (out, end) = trickled(&crlf, Some(700));
        assert_eq!(out, &crlf[..700]);
        assert!(end.is_err());
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

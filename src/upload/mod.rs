//! Attachments the API cannot take as they are (issue 15): a local file, or a URL with a query
//! string (a signed or expiring link; the API has answered such a URL with 422, FACTS pitfall 8).
//! Each is uploaded first through `POST /conversations/messages/upload` (multipart/form-data:
//! `conversationId`, `contactId`, `locationId` and one `fileAttachment` part), and the URL the
//! API answers with (`{uploadedFiles: {name: url}}`) goes in the message's `attachments`.
//!
//! - **When.** In the deliver step, after the row's lookups (the upload needs its contact and
//!   conversation) and before its message's write-ahead `sending` line. Every upload passes the
//!   run's gate like any request (a rate slot, the daily budget, `--max-requests`) and the
//!   retry policy (429 and 5xx retried; a lost answer retried too: a second upload of a file
//!   stores a second copy of it, never a second message).
//! - **Once.** The answer is appended to `<results>.uploads.csv` and synced before the message
//!   is sent (`log`); a resume, a rerun or the next night's run attaches the URL recorded there
//!   and uploads nothing. A file is known by its location, absolute path, size and modification
//!   time (an edited file is uploaded again); a downloaded one by its location and URL. Within a
//!   run, rows attaching the same file wait for one upload. What can still upload a file twice:
//!   a crash (or a power cut) between the upload's request and the sync of its answer's line —
//!   a window of one round trip and one `fdatasync` per file.
//! - **Remote files** (URLs with a query string) are downloaded by the importer (streamed into
//!   an unnamed temp file beside the results file, at most `--attachment-max-size` bytes) and
//!   uploaded as files, not handed to the API's `attachmentUrls`: a signed link may work only
//!   for the importer's network (a VPN, an intranet, a machine of the export's own), and the
//!   importer sees the file server's refusal (403 for a link that expired) in words.
//! - **Memory.** Files are streamed from disk in 64 KiB reads (positional, so a retried
//!   attempt re-reads from the start without sharing an offset), never read whole.
//! - **Failures.** A refusal (413 too large, 415 type, 400) makes the row `failed` with the
//!   server's words, retried on the next run; a download refused likewise.
//!
//! `files` holds the offline checks on disk (`validate` and the pass before a run).

pub mod files;
pub mod log;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde::Deserialize;

use crate::message::InboundMessage;
use crate::resolve::{Call, Env, Failure, gated_call};
use crate::retry::StopReason;
pub use crate::validate::shown;
use crate::validate::{AttachmentSource, check_attachment, upload_type};

pub use files::Files;
pub use log::{UploadLog, Uploaded};

/// The upload endpoint's path, below the base URL.
pub const UPLOAD_PATH: &str = "/conversations/messages/upload";

/// Bytes read from a file per chunk of the upload's body.
const CHUNK: usize = 64 * 1024;

/// The slowest upload speed a request's time limit allows for, beyond `--timeout`: 256 KiB/s
/// (a 200 MB file may take 13 minutes before it is given up).
const SLOWEST_BYTES_PER_SECOND: u64 = 256 * 1024;

/// The MIME type each upload type is sent as.
pub fn mime_of(ext: &str) -> &'static str {
    match ext {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "mp4" => "video/mp4",
        "mpeg" => "video/mpeg",
        "zip" => "application/zip",
        "rar" => "application/vnd.rar",
        "pdf" => "application/pdf",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "txt" => "text/plain",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// The upload type of a downloaded file whose URL has no usable extension, by its
/// `Content-Type`.
fn type_of_mime(content_type: &str) -> Option<&'static str> {
    let mime = content_type.split(';').next()?.trim().to_ascii_lowercase();
    Some(match mime.as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => "jpg",
        "image/png" => "png",
        "video/mp4" => "mp4",
        "video/mpeg" => "mpeg",
        "application/zip" | "application/x-zip-compressed" => "zip",
        "application/vnd.rar" | "application/x-rar-compressed" => "rar",
        "application/pdf" => "pdf",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "text/plain" => "txt",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        _ => return None,
    })
}

/// The body of a 2xx answer of the upload endpoint (`UploadFilesResponseDto`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadAnswer {
    uploaded_files: HashMap<String, serde_json::Value>,
}

/// A file ready to upload: open, its size, the name it goes under.
struct Ready {
    file: Arc<std::fs::File>,
    size: u64,
    name: String,
    ext: &'static str,
}

/// Uploads the attachments of one run, and remembers what it uploaded.
pub struct Uploader {
    /// The API client (the token comes with each request).
    client: reqwest::Client,
    /// Downloads remote files: never carries the token, follows a few redirects.
    fetch: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
    max_size: u64,
    /// Where downloads are spooled (unnamed temp files): the results file's folder.
    temp: PathBuf,
    log: UploadLog,
    /// Per file key: its upload, once made (from the journal, or by this run); rows attaching
    /// the same file wait on one cell.
    files: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Uploaded>>>>,
    /// Upload requests made, retries included.
    requests: AtomicU64,
    /// Files uploaded by this run.
    uploaded: AtomicU64,
    /// Attachments given a URL uploaded earlier (by an earlier run, or another row).
    reused: AtomicU64,
    /// Remote files downloaded.
    downloaded: AtomicU64,
}

/// A download follows at most [`REDIRECTS`] redirects, never from https to plain http off this
/// machine (the link's query string, its signature, would cross the network in clear).
fn follow_redirect(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    if attempt.previous().len() >= REDIRECTS {
        attempt.error(format!("more than {REDIRECTS} redirects"))
    } else if attempt.url().scheme() == "http" && !crate::sender::is_loopback(attempt.url()) {
        attempt
            .error("a redirect to plain http, refused (the link would cross the network in clear)")
    } else {
        attempt.follow()
    }
}

/// How many redirects a download follows.
const REDIRECTS: usize = 5;

impl Uploader {
    /// An uploader posting to `base` + the upload path, with the journal beside `results`.
    pub fn new(
        base: &reqwest::Url,
        results: &Path,
        timeout: Duration,
        max_size: u64,
    ) -> Result<Uploader> {
        let (log, known) = UploadLog::open(&log::path_for(results))?;
        let client = crate::sender::api_client(timeout, 8, HeaderMap::new())?;
        let fetch = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .read_timeout(timeout)
            .redirect(reqwest::redirect::Policy::custom(follow_redirect))
            .build()
            .context("building the HTTP client for downloads")?;
        let mut url = base.clone();
        url.set_path(&format!(
            "{}{UPLOAD_PATH}",
            base.path().trim_end_matches('/')
        ));
        let files = known
            .into_iter()
            .map(|(key, up)| (key, Arc::new(tokio::sync::OnceCell::new_with(Some(up)))))
            .collect();
        Ok(Uploader {
            client,
            fetch,
            url,
            timeout,
            max_size,
            temp: crate::results::line::folder_of(results),
            log,
            files: Mutex::new(files),
            requests: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
        })
    }

    /// Upload requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The uploader's line of the run's summary.
    pub fn summary(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "  uploads       {:>9}   ({} file(s) uploaded, {} downloaded first, {} attachment(s) given a URL uploaded earlier; kept in {})\n",
            n(&self.requests),
            n(&self.uploaded),
            n(&self.downloaded),
            n(&self.reused),
            self.log.path().display()
        )
    }

    /// Uploads every attachment of `m` that needs it (in `location`, under the message's contact
    /// and conversation) and puts the URLs in their place. `Err` as for lookups: the row
    /// fails with the reason, or the run stops.
    pub async fn attach(
        &self,
        m: &mut InboundMessage,
        location: &str,
        env: &Env<'_>,
    ) -> Result<(), Failure> {
        for i in 0..m.attachments.len() {
            let item = m.attachments[i].clone();
            let Ok(source) = check_attachment(&item) else {
                continue;
            };
            if !source.needs_upload() {
                continue;
            }
            let key = match &source {
                AttachmentSource::File(path) => {
                    let meta = std::fs::metadata(path).map_err(|e| {
                        row_failure(format!("attachment file {}: {e}", path.display()))
                    })?;
                    let mtime = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    format!("{location}|file:{}:{}:{mtime}", path.display(), meta.len())
                }
                // The link's query string (a signature) is not written down: its hash is.
                _ => remote_key(location, &item),
            };
            let cell = self
                .files
                .lock()
                .expect("uploader files")
                .entry(key.clone())
                .or_default()
                .clone();
            let mut made = false;
            let up = cell
                .get_or_try_init(|| {
                    made = true;
                    self.upload(m, location, &source, &item, &key, env)
                })
                .await?;
            if !made {
                self.reused.fetch_add(1, Ordering::Relaxed);
            }
            m.attachments[i].clone_from(&up.url);
        }
        Ok(())
    }

    /// One file: opened (or downloaded), uploaded through the gate, its answer journaled.
    async fn upload(
        &self,
        m: &InboundMessage,
        location: &str,
        source: &AttachmentSource,
        item: &str,
        key: &str,
        env: &Env<'_>,
    ) -> Result<Uploaded, Failure> {
        let what = format!("uploading {}", shown(item));
        let ready = match source {
            AttachmentSource::File(path) => open(path)?,
            _ => self.download(item).await?,
        };
        if ready.size > self.max_size {
            return Err(row_failure(format!(
                "{what}: the file is {} bytes, over the upload limit of {} bytes (--attachment-max-size)",
                ready.size, self.max_size
            )));
        }
        let timeout = self.timeout + Duration::from_secs(ready.size / SLOWEST_BYTES_PER_SECOND);
        let fields = [
            ("conversationId", m.conversation_id.clone()),
            ("contactId", m.contact_id.clone()),
            ("locationId", location.to_owned()),
        ];
        let request = || {
            let body = reqwest::Body::wrap_stream(chunks(ready.file.clone(), ready.size));
            let part = reqwest::multipart::Part::stream_with_length(body, ready.size)
                .file_name(ready.name.clone())
                .mime_str(mime_of(ready.ext))
                .expect("the upload types' MIME types parse");
            let form = fields
                .iter()
                .fold(reqwest::multipart::Form::new(), |form, (name, value)| {
                    form.text(*name, value.clone())
                })
                .part("fileAttachment", part);
            self.client
                .post(self.url.clone())
                .header("Version", crate::resolve::CONVERSATIONS_VERSION)
                .timeout(timeout)
                .multipart(form)
        };
        let answer = gated_call(env, &self.requests, &what, Call::Upload, request).await?;
        if !(200..300).contains(&answer.status) {
            return Err(answer.failure(&what));
        }
        let url = serde_json::from_slice::<UploadAnswer>(&answer.body)
            .ok()
            .and_then(|a| {
                let mut files = a.uploaded_files;
                let one = files.len() == 1;
                match files.remove(&ready.name) {
                    Some(v) => Some(v),
                    None if one => files.into_values().next(),
                    None => None,
                }
            })
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"));
        let Some(url) = url else {
            return Err(Failure::Row {
                error: format!(
                    "{what}: HTTP {} without a URL for {} in uploadedFiles",
                    answer.status, ready.name
                ),
                http_status: Some(answer.status),
                trace_id: crate::retry::trace_id(&answer.body),
            });
        };
        let up = Uploaded {
            url,
            name: ready.name.clone(),
            size: ready.size,
        };
        // On disk before any message attaches it: a resume never uploads it again.
        tokio::task::block_in_place(|| self.log.record(key, &up)).map_err(|e| {
            Failure::Stop(Some(StopReason::ResultsFile(format!(
                "{}: {e}",
                self.log.path().display()
            ))))
        })?;
        self.uploaded.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(file = %shown(item), url = %up.url, "uploaded");
        Ok(up)
    }

    /// A remote file, streamed into an unnamed temp file (at most the size limit).
    async fn download(&self, item: &str) -> Result<Ready, Failure> {
        let what = format!("downloading {}", shown(item));
        let fail = |why: String| row_failure(format!("{what}: {why}"));
        let mut response = self
            .fetch
            .get(item)
            .send()
            .await
            .map_err(|e| fail(crate::sender::error_chain(&e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!(
                "HTTP {}{}",
                status.as_u16(),
                if matches!(status.as_u16(), 401 | 403 | 410) {
                    " (a signed link that expired answers so: export the attachments again)"
                } else {
                    ""
                }
            )));
        }
        if let Some(len) = response.content_length()
            && len > self.max_size
        {
            return Err(fail(format!(
                "the file is {len} bytes, over the upload limit of {} bytes (--attachment-max-size)",
                self.max_size
            )));
        }
        let segment = response
            .url()
            .path_segments()
            .and_then(|mut s| s.next_back().map(str::to_owned))
            .map(|s| percent_encoding_decode(&s))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "attachment".to_owned());
        let by_mime = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(type_of_mime);
        let (name, ext) = match (upload_type(&segment), by_mime) {
            (Some(ext), _) => (segment, ext),
            (None, Some(ext)) => (format!("{segment}.{ext}"), ext),
            (None, None) => {
                return Err(fail(format!(
                    "{segment} is not a type the upload endpoint takes (by its name and its Content-Type): expected one of {}",
                    crate::validate::UPLOAD_TYPES.join(", ")
                )));
            }
        };
        let mut file = tempfile::tempfile_in(&self.temp).map_err(|e| {
            fail(format!(
                "cannot create a temp file in {}: {e}",
                self.temp.display()
            ))
        })?;
        let mut size = 0u64;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return Err(fail(crate::sender::error_chain(&e.without_url()))),
            };
            size += chunk.len() as u64;
            if size > self.max_size {
                return Err(fail(format!(
                    "the file is over the upload limit of {} bytes (--attachment-max-size)",
                    self.max_size
                )));
            }
            use std::io::Write as _;
            tokio::task::block_in_place(|| file.write_all(&chunk))
                .map_err(|e| fail(format!("cannot write its temp file: {e}")))?;
        }
        if size == 0 {
            return Err(fail("the file is empty".to_owned()));
        }
        self.downloaded.fetch_add(1, Ordering::Relaxed);
        Ok(Ready {
            file: Arc::new(file),
            size,
            name,
            ext,
        })
    }
}

/// The journal's key of a remote file: the URL without its query string (as [`shown`] prints
/// it), then a hash of the whole URL, so two links to one path are two files and the
/// signature never reaches the disk.
fn remote_key(location: &str, item: &str) -> String {
    let hash = xxhash_rust::xxh3::xxh3_128(item.as_bytes());
    format!("{location}|url:{}#{hash:032x}", shown(item))
}

/// `%20` and the like in a URL's last segment, for the file's name.
fn percent_encoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("n={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
}

/// A local file, opened for the upload.
fn open(path: &Path) -> Result<Ready, Failure> {
    let fail = |e: std::io::Error| row_failure(format!("attachment file {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(fail)?;
    let size = file.metadata().map_err(fail)?.len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".to_owned());
    let Some(ext) = upload_type(&name) else {
        return Err(row_failure(format!(
            "attachment file {} is not a type the upload endpoint takes",
            path.display()
        )));
    };
    Ok(Ready {
        file: Arc::new(file),
        size,
        name,
        ext,
    })
}

fn row_failure(error: String) -> Failure {
    Failure::Row {
        error,
        http_status: None,
        trace_id: String::new(),
    }
}

/// The first `len` bytes of `file`, in chunks, by positional reads on the blocking pool: a
/// retried attempt reads from the start again, whatever an earlier attempt's body still does.
/// A file that shrank meanwhile ends the body with an error (the request is then not whole).
fn chunks(
    file: Arc<std::fs::File>,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(0u64, move |at| {
        let file = file.clone();
        async move {
            if at >= len {
                return Ok(None);
            }
            let want = usize::try_from((len - at).min(CHUNK as u64)).expect("a chunk fits");
            let buf = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; want];
                file.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((Bytes::from(buf), at + want as u64)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_links_are_shown_without_their_signature() {
        assert_eq!(
            shown("https://storage.example/b/a.pdf?X-Goog-Signature=abc"),
            "https://storage.example/b/a.pdf?…"
        );
        assert_eq!(shown("scans/a.pdf"), "scans/a.pdf");
        assert_eq!(type_of_mime("application/pdf; charset=binary"), Some("pdf"));
        assert_eq!(type_of_mime("application/x-msdownload"), None);
        assert_eq!(percent_encoding_decode("Invoice%207.pdf"), "Invoice 7.pdf");
    }

    #[tokio::test]
    async fn a_file_streams_in_chunks_from_the_start_each_time() {
        use futures_util::TryStreamExt;
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::io::Write::write_all(&mut f, &data).unwrap();
        let f = Arc::new(f);
        for _ in 0..2 {
            let parts: Vec<Bytes> = chunks(f.clone(), data.len() as u64)
                .try_collect()
                .await
                .unwrap();
            assert!(parts.iter().all(|p| p.len() <= CHUNK));
            assert_eq!(parts.concat(), data);
        }
        // Shorter than announced: an error, not a short body.
        let short = chunks(f, data.len() as u64 + 10)
            .try_collect::<Vec<_>>()
            .await;
        assert!(short.is_err());
    }
}

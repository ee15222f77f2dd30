//! The sandbox's attachment routes (issue 15):
//!
//! - `POST /conversations/messages/upload` (`UploadFilesDto`, multipart/form-data): the gate as
//!   every route (token → budget → `Version`); then the form read as a stream, each
//!   `fileAttachment` part written to disk chunk by chunk (never held in memory), its type
//!   checked by its file name's extension (415 for one the endpoint does not take) and its size
//!   against the limit (413 once it is passed; the rest of the body is read and dropped first,
//!   so the client, still sending, reads the answer instead of a reset connection). The
//!   refusals are the spec's `UploadFilesErrorResponseDto` `{status, message}`. `conversationId`,
//!   `contactId` and `locationId` must be there (400). The spec also marks `attachmentUrls`
//!   required, which cannot hold for an upload of files (a form has no empty list); the sandbox
//!   takes a form with files and no `attachmentUrls`, and answers `attachmentUrls` alone with 400
//!   (it fetches nothing from the network). 200 `{uploadedFiles: {name: url}}`: URLs below
//!   `/conversations-assets/` on the address the request came to.
//! - `GET /conversations-assets/{id}/{name}`: the file, streamed from disk (no token: the real
//!   API's URLs are public CDN links).
//!
//! `--fail-rate` answers uploads too (500/502/503 after reading the form, nothing kept).
//!
//! The inbound route asks [`Store::not_uploaded`] whether a message attaches a sandbox URL it
//! never handed out (counted in `/__stats` as `attachments_not_uploaded`; the message is still
//! stored, as the real API would store any URL).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::assets::{ASSETS_PATH, Store};

use super::state::Shared;
use super::stats::Counted;

/// The largest text field of an upload form the sandbox reads.
const MAX_TEXT_FIELD: usize = 64 * 1024;

/// Why an upload form is refused, with the status it is answered with.
struct Refusal(StatusCode, String);

/// `POST /conversations/messages/upload`.
pub(super) async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let mut admitted = match shared.admit_route(&headers) {
        Ok(admitted) => admitted,
        Err(refused) => return *refused,
    };
    let id = super::chance::new_id(&mut admitted.rng);
    let store = &shared.uploads;
    // `--fail-rate` as on the inbound route (the other faults are the inbound route's only).
    let faults = *shared.faults.read().unwrap_or_else(|p| p.into_inner());
    if let super::chance::Fault::Fail(status) = super::chance::pick_fault(&mut admitted.rng, faults)
    {
        if let Ok(mut form) = form {
            while let Ok(Some(mut field)) = form.next_field().await {
                while let Ok(Some(_)) = field.chunk().await {}
            }
        }
        shared.counters.count(Counted::ServerError);
        let body = json!({"statusCode": status.as_u16(), "message": "Internal server error", "traceId": admitted.trace_id});
        let mut response = super::answer::json_response(status, &body);
        super::answer::put_rate_headers(response.headers_mut(), admitted.rate);
        return response;
    }
    let outcome = match form {
        Ok(form) => read_form(store, form, &id).await,
        Err(e) => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Expected a multipart/form-data body: {}", e.body_text()),
        )),
    };
    let (status, mut body) = match outcome {
        Ok(names) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            let mut files = serde_json::Map::new();
            let mut served = store.served.lock().unwrap_or_else(|p| p.into_inner());
            for name in names {
                served.insert(format!("{id}/{name}"));
                let mut url = url::Url::parse(&format!("http://{host}{ASSETS_PATH}/"))
                    .expect("a host header makes a URL");
                url.path_segments_mut()
                    .expect("an http URL has segments")
                    .pop_if_empty()
                    .push(&id)
                    .push(&name);
                files.insert(name, json!(url.to_string()));
                shared.counters.count(Counted::Uploaded);
            }
            (StatusCode::OK, json!({"uploadedFiles": files}))
        }
        Err(Refusal(status, message)) => {
            let _ = std::fs::remove_dir_all(store.dir.join(&id));
            shared.counters.count(match status {
                StatusCode::PAYLOAD_TOO_LARGE => Counted::UploadTooLarge,
                StatusCode::UNSUPPORTED_MEDIA_TYPE => Counted::UploadUnsupported,
                _ => Counted::BadRequest,
            });
            (
                status,
                json!({"status": status.as_u16(), "message": message}),
            )
        }
    };
    body["traceId"] = json!(admitted.trace_id);
    let mut response = super::answer::json_response(status, &body);
    super::answer::put_rate_headers(response.headers_mut(), admitted.rate);
    response
}

/// Reads the whole form, writing its files under `dir/id/`; the names of the files kept.
async fn read_form(store: &Store, mut form: Multipart, id: &str) -> Result<Vec<String>, Refusal> {
    let bad = |m: String| Refusal(StatusCode::BAD_REQUEST, m);
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut urls = 0usize;
    let mut names = Vec::new();
    // The first refusal; the rest of the body is still read (and dropped) before answering.
    let mut refused: Option<Refusal> = None;
    let folder = store.dir.join(id);
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(bad(format!("The multipart body is broken: {e}"))),
        };
        let name = field.name().unwrap_or("").to_owned();
        if name != "fileAttachment" {
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(|e| bad(e.to_string()))? {
                if text.len() + chunk.len() > MAX_TEXT_FIELD {
                    return Err(bad(format!("The field {name} is too long")));
                }
                text.extend_from_slice(&chunk);
            }
            let text = String::from_utf8_lossy(&text).trim().to_owned();
            if name.starts_with("attachmentUrls") {
                urls += usize::from(!text.is_empty());
            } else {
                texts.insert(name, text);
            }
            continue;
        }
        let file_name = field
            .file_name()
            .and_then(|n| Path::new(n).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..");
        let ext = file_name.as_deref().and_then(|n| {
            let ext = Path::new(n).extension()?.to_str()?.to_ascii_lowercase();
            store.types.contains(&ext).then_some(ext)
        });
        let keep = refused.is_none() && ext.is_some();
        if refused.is_none() && !keep {
            refused = Some(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "File type not supported: {} (allowed: {})",
                    file_name.as_deref().unwrap_or("a part without a file name"),
                    store.types.join(", ").to_uppercase()
                ),
            ));
        }
        let mut out = None;
        if keep {
            let file_name = file_name.clone().expect("kept parts have a name");
            let open = async {
                tokio::fs::create_dir_all(&folder).await?;
                tokio::fs::File::create(folder.join(&file_name)).await
            };
            match open.await {
                Ok(file) => out = Some((file, file_name)),
                Err(e) => {
                    refused = Some(Refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("Failed to upload the files: {e}"),
                    ));
                }
            }
        }
        let mut size = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(|e| bad(e.to_string()))? {
            size += chunk.len() as u64;
            let Some((file, file_name)) = out.as_mut() else {
                continue;
            };
            if size > store.max_size {
                refused = Some(Refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "File too large: {file_name} is over the limit of {} bytes",
                        store.max_size
                    ),
                ));
                out = None;
                continue;
            }
            if let Err(e) = file.write_all(&chunk).await {
                refused = Some(Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Failed to upload the files: {e}"),
                ));
                out = None;
            }
        }
        if let Some((mut file, file_name)) = out {
            if let Err(e) = file.flush().await {
                refused = Some(Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Failed to upload the files: {e}"),
                ));
            } else {
                names.push(file_name);
            }
        }
    }
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    for required in ["conversationId", "contactId", "locationId"] {
        if texts.get(required).is_none_or(String::is_empty) {
            return Err(bad(format!("{required} should not be empty")));
        }
    }
    if names.is_empty() {
        return Err(bad(match urls {
            0 => "No files: send fileAttachment parts (or attachmentUrls)".to_owned(),
            _ => {
                "The sandbox does not fetch attachmentUrls: send the files as fileAttachment parts"
                    .to_owned()
            }
        }));
    }
    Ok(names)
}

/// `GET /conversations-assets/{id}/{name}`: an uploaded file, streamed from disk.
pub(super) async fn asset(
    State(shared): State<Arc<Shared>>,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Response {
    let store = &shared.uploads;
    let known = store
        .served
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&format!("{id}/{name}"));
    let file = match known {
        true => tokio::fs::File::open(store.dir.join(&id).join(&name))
            .await
            .ok(),
        false => None,
    };
    let Some(file) = file else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let mime = crate::validate::upload_type(&name).map_or("application/octet-stream", |ext| {
        crate::upload::mime_of(ext)
    });
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Some(len) = len {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    response
}

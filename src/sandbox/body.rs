//! Validation of the `POST /conversations/messages/inbound` body (`ProcessMessageBodyDto`), the way
//! the real API's NestJS `ValidationPipe` with class-validator does it: every violation collected,
//! unknown properties first (`whitelist` + `forbidNonWhitelisted`), then each field in the spec's
//! declaration order, with class-validator's own message strings. A nested `call` object's messages
//! carry the `call.` prefix NestJS gives them.
//!
//! Where the API's decorators are not public, this is the reading chosen (FACTS §2, §8):
//! - `conversationId` and `contactId` are required non-empty strings (`@IsString() @IsNotEmpty()`);
//!   `conversationProviderId` is optional, since default SMS and Email providers do not need it.
//! - Optional fields accept `null` as absent (`@IsOptional()` does).
//! - `attachments` must be a non-empty array of strings; a non-array fails both the size and the
//!   array check, as the messages quoted in FACTS §2 appear together.
//! - `direction` must be `inbound` or `outbound` (the spec says `type: object`; clients send these
//!   strings); `date` must be an ISO 8601 date string.
//!
//! Pure: no I/O, tested below with a table.

use jiff::Timestamp;
use serde_json::{Map, Value};

/// `ProcessMessageBodyDto.type`.
pub const MESSAGE_TYPES: [&str; 17] = [
    "SMS",
    "RCS",
    "Email",
    "WhatsApp",
    "GMB",
    "IG",
    "FB",
    "Custom",
    "WebChat",
    "Live_Chat",
    "Call",
    "IVR_Call",
    "Campaign_Call",
    "Campaign_VoiceMail",
    "TIKTOK",
    "ALL_IN_ONE_CHAT",
    "FORM_SUBMISSION",
];

/// `CallDataDTO.status`.
pub const CALL_STATUSES: [&str; 8] = [
    "pending",
    "completed",
    "answered",
    "busy",
    "no-answer",
    "failed",
    "canceled",
    "voicemail",
];

const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];

/// How one field is checked.
#[derive(Clone, Copy)]
enum Rule {
    /// Required, one of the listed values.
    Enum(&'static [&'static str]),
    /// Required, a non-empty string.
    RequiredString,
    OptionalString,
    /// Optional; if present a non-empty array of strings.
    NonEmptyStringArray,
    OptionalStringArray,
    /// Optional; if present one of the listed values.
    OptionalEnum(&'static [&'static str]),
    OptionalDate,
    /// Optional; if present a `CallDataDTO` object.
    Call,
}

/// `ProcessMessageBodyDto`'s properties in the spec's declaration order.
const BODY_FIELDS: [(&str, Rule); 17] = [
    ("type", Rule::Enum(&MESSAGE_TYPES)),
    ("attachments", Rule::NonEmptyStringArray),
    ("message", Rule::OptionalString),
    ("conversationId", Rule::RequiredString),
    ("contactId", Rule::RequiredString),
    ("conversationProviderId", Rule::OptionalString),
    ("html", Rule::OptionalString),
    ("subject", Rule::OptionalString),
    ("emailFrom", Rule::OptionalString),
    ("emailTo", Rule::OptionalString),
    ("emailCc", Rule::OptionalStringArray),
    ("emailBcc", Rule::OptionalStringArray),
    ("emailMessageId", Rule::OptionalString),
    ("altId", Rule::OptionalString),
    ("direction", Rule::OptionalEnum(&DIRECTIONS)),
    ("date", Rule::OptionalDate),
    ("call", Rule::Call),
];

/// `CallDataDTO`'s properties.
const CALL_FIELDS: [(&str, Rule); 3] = [
    ("to", Rule::OptionalString),
    ("from", Rule::OptionalString),
    ("status", Rule::OptionalEnum(&CALL_STATUSES)),
];

/// A body that passed validation: what the sandbox needs from it to answer and to keep count.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound<'a> {
    pub message_type: &'a str,
    pub conversation_id: &'a str,
    pub contact_id: &'a str,
    pub conversation_provider_id: Option<&'a str>,
    /// The message's own `date`, if it has one (for the per-conversation ordering check).
    pub date: Option<Timestamp>,
}

impl Inbound<'_> {
    /// `Email` answers carry an `emailMessageId` to thread replies on.
    pub fn is_email(&self) -> bool {
        self.message_type == "Email"
    }

    /// The known quirk (FACTS §8.2): `Custom` without a provider answers 201 with an empty body
    /// and stores nothing.
    pub fn is_silently_ignored(&self) -> bool {
        self.message_type == "Custom" && self.conversation_provider_id.is_none()
    }
}

/// Checks a request body (already parsed as a JSON object) and collects every violation.
pub fn validate(body: &Map<String, Value>) -> Result<Inbound<'_>, Vec<String>> {
    let mut messages = Vec::new();
    check_object(body, &BODY_FIELDS, "", &mut messages);
    if !messages.is_empty() {
        return Err(messages);
    }
    // Every rule below held, so these reads cannot miss; `validated` says so in one place.
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    let (Some(message_type), Some(conversation_id), Some(contact_id)) =
        (text("type"), text("conversationId"), text("contactId"))
    else {
        unreachable!("validated: type, conversationId and contactId are strings");
    };
    Ok(Inbound {
        message_type,
        conversation_id,
        contact_id,
        conversation_provider_id: text("conversationProviderId").filter(|p| !p.is_empty()),
        date: text("date").and_then(parse_date),
    })
}

/// Checks `object` against `fields`, pushing messages prefixed with `prefix` (`""` or `"call."`).
fn check_object(
    object: &Map<String, Value>,
    fields: &[(&str, Rule)],
    prefix: &str,
    messages: &mut Vec<String>,
) {
    for key in object.keys() {
        if !fields.iter().any(|(name, _)| name == key) {
            messages.push(format!("{prefix}property {key} should not exist"));
        }
    }
    for (name, rule) in fields {
        check_field(name, *rule, object.get(*name), prefix, messages);
    }
}

fn check_field(
    name: &str,
    rule: Rule,
    value: Option<&Value>,
    prefix: &str,
    messages: &mut Vec<String>,
) {
    // Messages are built only on failure: this runs for every field of every request.
    let mut fail = |says: &str| messages.push(format!("{prefix}{name} {says}"));
    // `@IsOptional()` skips every other check for a missing or null value.
    let present = value.filter(|v| !v.is_null());
    match (rule, present) {
        (Rule::Enum(allowed), v) => {
            if !v
                .and_then(Value::as_str)
                .is_some_and(|s| allowed.contains(&s))
            {
                fail(&one_of(allowed));
            }
        }
        (Rule::RequiredString, v) => {
            // class-validator's isNotEmpty rejects only undefined, null and "".
            if v.is_none() || v.and_then(Value::as_str) == Some("") {
                fail("should not be empty");
            }
            if !v.is_some_and(Value::is_string) {
                fail("must be a string");
            }
        }
        (_, None) => {}
        (Rule::OptionalString, Some(v)) => {
            if !v.is_string() {
                fail("must be a string");
            }
        }
        (Rule::NonEmptyStringArray, Some(v)) => match v.as_array() {
            Some(items) => {
                if items.is_empty() {
                    fail("must contain at least 1 elements");
                }
                if !items.iter().all(Value::is_string) {
                    messages.push(format!("each value in {prefix}{name} must be a string"));
                }
            }
            None => {
                fail("must contain at least 1 elements");
                fail("must be an array");
            }
        },
        (Rule::OptionalStringArray, Some(v)) => match v.as_array() {
            Some(items) => {
                if !items.iter().all(Value::is_string) {
                    messages.push(format!("each value in {prefix}{name} must be a string"));
                }
            }
            None => fail("must be an array"),
        },
        (Rule::OptionalEnum(allowed), Some(v)) => {
            if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
                fail(&one_of(allowed));
            }
        }
        (Rule::OptionalDate, Some(v)) => {
            if v.as_str().and_then(parse_date).is_none() {
                fail("must be a valid ISO 8601 date string");
            }
        }
        (Rule::Call, Some(v)) => match v.as_object() {
            Some(call) => check_object(call, &CALL_FIELDS, &format!("{prefix}{name}."), messages),
            None => messages.push(format!(
                "nested property {prefix}{name} must be either object or array"
            )),
        },
    }
}

fn one_of(allowed: &[&str]) -> String {
    format!(
        "must be one of the following values: {}",
        allowed.join(", ")
    )
}

/// An ISO 8601 date: with an offset (`2024-05-01T10:00:00Z`, `…+02:00`), or without one
/// (`2024-05-01T10:00:00`, `2024-05-01`), read as UTC.
fn parse_date(s: &str) -> Option<Timestamp> {
    use jiff::civil::{Date, DateTime};
    use jiff::tz::TimeZone;
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    let civil = s
        .parse::<DateTime>()
        .or_else(|_| {
            s.parse::<Date>()
                .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
        })
        .ok()?;
    TimeZone::UTC.to_timestamp(civil).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TYPES: &str = "type must be one of the following values: SMS, RCS, Email, WhatsApp, \
        GMB, IG, FB, Custom, WebChat, Live_Chat, Call, IVR_Call, Campaign_Call, \
        Campaign_VoiceMail, TIKTOK, ALL_IN_ONE_CHAT, FORM_SUBMISSION";
    const STATUSES: &str = "call.status must be one of the following values: pending, \
        completed, answered, busy, no-answer, failed, canceled, voicemail";

    fn sms() -> Value {
        json!({
            "type": "SMS",
            "conversationId": "ve9EPM428h8vShlRW1KT",
            "contactId": "q7Xk2LmN4pR8sT1vW3yZ",
            "message": "hello",
            "direction": "inbound",
            "date": "2024-05-01T10:00:00Z",
        })
    }

    /// `sms()` with `changes` applied (a null value removes the key).
    fn sms_with(changes: Value) -> Value {
        let mut body = sms();
        for (k, v) in changes.as_object().expect("changes are an object") {
            let map = body.as_object_mut().expect("sms() is an object");
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
        body
    }

    fn messages(body: &Value) -> Vec<String> {
        match validate(body.as_object().expect("test bodies are objects")) {
            Ok(_) => Vec::new(),
            Err(m) => m,
        }
    }

    #[test]
    fn violations_table() {
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (sms(), vec![]),
            (
                sms_with(json!({"foo": 1})),
                vec!["property foo should not exist"],
            ),
            (
                sms_with(json!({"conversationId": 5})),
                vec!["conversationId must be a string"],
            ),
            (
                sms_with(json!({"conversationId": null})),
                vec![
                    "conversationId should not be empty",
                    "conversationId must be a string",
                ],
            ),
            (
                sms_with(json!({"conversationId": ""})),
                vec!["conversationId should not be empty"],
            ),
            (
                sms_with(json!({"contactId": null})),
                vec![
                    "contactId should not be empty",
                    "contactId must be a string",
                ],
            ),
            (sms_with(json!({"type": "Fax"})), vec![TYPES]),
            (sms_with(json!({"type": "sms"})), vec![TYPES]),
            (sms_with(json!({"type": null})), vec![TYPES]),
            (
                sms_with(json!({"attachments": []})),
                vec!["attachments must contain at least 1 elements"],
            ),
            (
                sms_with(json!({"attachments": "https://x.test/a.png"})),
                vec![
                    "attachments must contain at least 1 elements",
                    "attachments must be an array",
                ],
            ),
            (
                sms_with(json!({"attachments": ["https://x.test/a.png", 3]})),
                vec!["each value in attachments must be a string"],
            ),
            (
                sms_with(json!({"attachments": ["https://x.test/a.png"]})),
                vec![],
            ),
            (
                sms_with(json!({"message": 12})),
                vec!["message must be a string"],
            ),
            (
                sms_with(json!({"emailCc": "a@b.test"})),
                vec!["emailCc must be an array"],
            ),
            (
                sms_with(json!({"emailBcc": [1]})),
                vec!["each value in emailBcc must be a string"],
            ),
            (
                sms_with(json!({"direction": "sideways"})),
                vec!["direction must be one of the following values: inbound, outbound"],
            ),
            (
                sms_with(json!({"date": "yesterday"})),
                vec!["date must be a valid ISO 8601 date string"],
            ),
            (sms_with(json!({"date": "2024-05-01"})), vec![]),
            (
                sms_with(json!({"date": "2024-05-01T10:00:00+02:00"})),
                vec![],
            ),
            (
                sms_with(json!({"call": {"status": "ringing"}})),
                vec![STATUSES],
            ),
            (
                sms_with(json!({"call": {"to": "+15550001", "bar": true}})),
                vec!["call.property bar should not exist"],
            ),
            (
                sms_with(json!({"call": {"to": 5}})),
                vec!["call.to must be a string"],
            ),
            (
                sms_with(json!({"call": "+15550001"})),
                vec!["nested property call must be either object or array"],
            ),
            (
                sms_with(
                    json!({"type": "Call", "call": {"to": "+1555", "from": "+1556", "status": "completed"}}),
                ),
                vec![],
            ),
            // Optional fields accept null as absent.
            (sms_with(json!({"message": null, "call": null})), vec![]),
        ];
        for (body, want) in cases {
            assert_eq!(messages(&body), want, "body: {body}");
        }
    }

    #[test]
    fn every_violation_is_listed_unknown_properties_first() {
        let body = json!({
            "zzz": 1,
            "type": "Fax",
            "attachments": [],
            "conversationId": 7,
            "call": {"status": "ringing", "x": 1},
            "aaa": 2,
        });
        assert_eq!(
            messages(&body),
            vec![
                "property aaa should not exist",
                "property zzz should not exist",
                TYPES,
                "attachments must contain at least 1 elements",
                "conversationId must be a string",
                "contactId should not be empty",
                "contactId must be a string",
                "call.property x should not exist",
                STATUSES,
            ]
        );
    }

    #[test]
    fn empty_body_names_the_required_fields() {
        assert_eq!(
            messages(&json!({})),
            vec![
                TYPES,
                "conversationId should not be empty",
                "conversationId must be a string",
                "contactId should not be empty",
                "contactId must be a string",
            ]
        );
    }

    #[test]
    fn accepted_body_exposes_what_the_answer_needs() {
        let body = sms();
        let m = validate(body.as_object().expect("object")).expect("valid");
        assert_eq!(m.conversation_id, "ve9EPM428h8vShlRW1KT");
        assert_eq!(m.contact_id, "q7Xk2LmN4pR8sT1vW3yZ");
        assert!(!m.is_email() && !m.is_silently_ignored());
        assert_eq!(
            m.date,
            Some("2024-05-01T10:00:00Z".parse().expect("timestamp"))
        );

        let custom = sms_with(json!({"type": "Custom"}));
        let m = validate(custom.as_object().expect("object")).expect("valid");
        assert!(m.is_silently_ignored());
        let custom = sms_with(json!({"type": "Custom", "conversationProviderId": "p1"}));
        let m = validate(custom.as_object().expect("object")).expect("valid");
        assert!(!m.is_silently_ignored());
        let email = sms_with(json!({"type": "Email"}));
        assert!(
            validate(email.as_object().expect("object"))
                .expect("valid")
                .is_email()
        );
    }
}

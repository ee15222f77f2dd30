//! The request body of `POST /conversations/messages/inbound` (`ProcessMessageBodyDto` in
//! `api/apps/conversations.json`) and the spellings users write for its enums.
//!
//! Only fields of the spec exist here, so only they can ever be sent: the API answers 422 to
//! any unknown property (FACTS pitfall 9).

use serde::{Deserialize, Serialize};

/// One message as the API receives it. Empty values are left out of the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundMessage {
    /// `type`: the channel (SMS, Email, Call, …).
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// `conversationId`: the conversation it goes in; empty while [`crate::resolve`] is to find it.
    pub conversation_id: String,
    /// `contactId`: the contact it belongs to; empty while [`crate::resolve`] is to find it.
    pub contact_id: String,
    /// `conversationProviderId`: the custom provider; needed for `Custom` and `Call`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_provider_id: Option<String>,
    /// `message`: the text of the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `attachments`: URLs of the attached files; empty: none (left out of the JSON).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub attachments: Vec<String>,
    /// `html`: the HTML body of an e-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// `subject`: the subject of an e-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `emailFrom`: the sender's address of an e-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_from: Option<String>,
    /// `emailTo`: the recipient's address of an e-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_to: Option<String>,
    /// `emailCc`: the Cc addresses of an e-mail; empty: none.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub email_cc: Vec<String>,
    /// `emailBcc`: the Bcc addresses of an e-mail; empty: none.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub email_bcc: Vec<String>,
    /// `emailMessageId`: the e-mail's own Message-ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_message_id: Option<String>,
    /// `altId`: the message's ID in the system it was exported from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alt_id: Option<String>,
    /// Always sent: the API's default is `outbound` (FACTS §2), which would misfile history.
    pub direction: Direction,
    /// RFC 3339 in UTC, normalised by the mapping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// `call`: who called whom and how it went, for call types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<CallData>,
}

/// `CallDataDTO`: who called whom, and how it went. No field is required.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallData {
    /// `call.to`: the number that was called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `call.from`: the number that called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `call.status`: how the call went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CallStatus>,
}

/// Lower-cases and drops `_`, `-`, `.` and spaces: the form in which user spellings of column
/// names and enum values are compared (`Live Chat`, `live_chat` and `LIVE-CHAT` are one).
pub fn fold(s: &str) -> String {
    folded(s).collect()
}

fn folded(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' ' | '\t'))
        .flat_map(char::to_lowercase)
}

/// `fold(a) == fold(b)` without building either string (every row's enum cells go through
/// this).
fn fold_eq(a: &str, b: &str) -> bool {
    a == b || folded(a).eq(folded(b))
}

/// An enum of the spec with its exact spellings, parsed leniently from user input.
pub trait SpecEnum: Sized + Copy + 'static {
    /// Every value, in the spec's order.
    const ALL: &'static [Self];
    /// Common words for a value that are not the value itself: suggested, never accepted
    /// silently, because a wrong guess would misfile a message.
    const SYNONYMS: &'static [(&'static str, Self)] = &[];
    /// The spec's exact spelling, as sent in the JSON.
    fn as_str(self) -> &'static str;

    /// Case, `_`, `-`, `.` and spaces ignored. On failure, the closest value if one is close.
    fn parse_lenient(input: &str) -> Result<Self, Option<Self>> {
        if let Some(v) = Self::ALL.iter().find(|v| fold_eq(v.as_str(), input)) {
            return Ok(*v);
        }
        let folded = fold(input);
        if let Some((_, v)) = Self::SYNONYMS.iter().find(|(w, _)| *w == folded) {
            return Err(Some(*v));
        }
        Err(closest(
            &folded,
            Self::ALL.iter().map(|v| (fold(v.as_str()), *v)),
        ))
    }

    /// `SMS, RCS, Email, …` for error messages.
    fn list() -> String {
        Self::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The candidate within edit distance 2 of `word` (and less than half its length), if any.
pub fn closest<T>(word: &str, candidates: impl IntoIterator<Item = (String, T)>) -> Option<T> {
    let limit = (word.chars().count() / 2).clamp(1, 2);
    candidates
        .into_iter()
        .map(|(c, v)| (edit_distance(word, &c), v))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

macro_rules! spec_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }
        impl $name {
            /// Every value, in the spec's order.
            pub const VALUES: &'static [$name] = &[$($name::$variant),+];
        }
    };
}

spec_enum!(
    /// `type`: the channel of the message.
    #[derive(Default)]
    MessageType {
        /// A text message.
        #[default]
        Sms = "SMS",
        /// An RCS chat message.
        Rcs = "RCS",
        /// An e-mail.
        Email = "Email",
        /// A WhatsApp message.
        WhatsApp = "WhatsApp",
        /// A Google Business Profile message.
        Gmb = "GMB",
        /// An Instagram direct message.
        Ig = "IG",
        /// A Facebook Messenger message.
        Fb = "FB",
        /// A message of a custom conversation provider (needs `conversationProviderId`).
        Custom = "Custom",
        /// A message from the website chat widget.
        WebChat = "WebChat",
        /// A live chat message.
        LiveChat = "Live_Chat",
        /// A phone call (needs `conversationProviderId`).
        Call = "Call",
        /// A call handled by an IVR menu.
        IvrCall = "IVR_Call",
        /// A call made by a campaign.
        CampaignCall = "Campaign_Call",
        /// A voicemail left by a campaign.
        CampaignVoiceMail = "Campaign_VoiceMail",
        /// A TikTok message.
        TikTok = "TIKTOK",
        /// A message of the all-in-one chat channel.
        AllInOneChat = "ALL_IN_ONE_CHAT",
        /// A form submission.
        FormSubmission = "FORM_SUBMISSION",
    }
);

impl SpecEnum for MessageType {
    const ALL: &'static [Self] = Self::VALUES;
    const SYNONYMS: &'static [(&'static str, Self)] = &[
        ("text", MessageType::Sms),
        ("textmessage", MessageType::Sms),
        ("mms", MessageType::Sms),
        ("message", MessageType::Sms),
        ("mail", MessageType::Email),
        ("phone", MessageType::Call),
        ("phonecall", MessageType::Call),
        ("voice", MessageType::Call),
        ("facebook", MessageType::Fb),
        ("messenger", MessageType::Fb),
        ("instagram", MessageType::Ig),
        ("google", MessageType::Gmb),
        ("googlebusiness", MessageType::Gmb),
        ("chat", MessageType::WebChat),
        ("voicemail", MessageType::CampaignVoiceMail),
        ("form", MessageType::FormSubmission),
    ];
    fn as_str(self) -> &'static str {
        match self {
            MessageType::Sms => "SMS",
            MessageType::Rcs => "RCS",
            MessageType::Email => "Email",
            MessageType::WhatsApp => "WhatsApp",
            MessageType::Gmb => "GMB",
            MessageType::Ig => "IG",
            MessageType::Fb => "FB",
            MessageType::Custom => "Custom",
            MessageType::WebChat => "WebChat",
            MessageType::LiveChat => "Live_Chat",
            MessageType::Call => "Call",
            MessageType::IvrCall => "IVR_Call",
            MessageType::CampaignCall => "Campaign_Call",
            MessageType::CampaignVoiceMail => "Campaign_VoiceMail",
            MessageType::TikTok => "TIKTOK",
            MessageType::AllInOneChat => "ALL_IN_ONE_CHAT",
            MessageType::FormSubmission => "FORM_SUBMISSION",
        }
    }
}

impl MessageType {
    /// Types that the API only accepts with a `conversationProviderId` (FACTS §2.3, pitfall 2:
    /// `Custom` without one answers 201 with an empty body and stores nothing).
    pub fn needs_provider(self) -> bool {
        matches!(self, MessageType::Custom | MessageType::Call)
    }
}

spec_enum!(
    /// `direction`: the spec types it as `object` but the API takes these two strings.
    #[derive(Default)]
    Direction {
        /// From the contact to the business.
        #[default]
        Inbound = "inbound",
        /// From the business to the contact.
        Outbound = "outbound",
    }
);

impl SpecEnum for Direction {
    const ALL: &'static [Self] = Self::VALUES;
    const SYNONYMS: &'static [(&'static str, Self)] = &[
        ("in", Direction::Inbound),
        ("incoming", Direction::Inbound),
        ("received", Direction::Inbound),
        ("out", Direction::Outbound),
        ("outgoing", Direction::Outbound),
        ("sent", Direction::Outbound),
    ];
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

spec_enum!(
    /// `call.status`.
    CallStatus {
        /// Not ended yet.
        Pending = "pending",
        /// Connected and ended.
        Completed = "completed",
        /// Picked up.
        Answered = "answered",
        /// The line was busy.
        Busy = "busy",
        /// Nobody picked up.
        NoAnswer = "no-answer",
        /// Could not be placed.
        Failed = "failed",
        /// Canceled before it connected.
        Canceled = "canceled",
        /// Went to voicemail.
        Voicemail = "voicemail",
    }
);

impl SpecEnum for CallStatus {
    const ALL: &'static [Self] = Self::VALUES;
    const SYNONYMS: &'static [(&'static str, Self)] = &[
        ("cancelled", CallStatus::Canceled),
        ("missed", CallStatus::NoAnswer),
        ("unanswered", CallStatus::NoAnswer),
    ];
    fn as_str(self) -> &'static str {
        match self {
            CallStatus::Pending => "pending",
            CallStatus::Completed => "completed",
            CallStatus::Answered => "answered",
            CallStatus::Busy => "busy",
            CallStatus::NoAnswer => "no-answer",
            CallStatus::Failed => "failed",
            CallStatus::Canceled => "canceled",
            CallStatus::Voicemail => "voicemail",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_spellings() {
        let cases: &[(&str, Result<MessageType, Option<MessageType>>)] = &[
            ("SMS", Ok(MessageType::Sms)),
            ("sms", Ok(MessageType::Sms)),
            (" Sms ", Ok(MessageType::Sms)),
            ("email", Ok(MessageType::Email)),
            ("EMAIL", Ok(MessageType::Email)),
            ("whatsapp", Ok(MessageType::WhatsApp)),
            ("Whats App", Ok(MessageType::WhatsApp)),
            ("live chat", Ok(MessageType::LiveChat)),
            ("LIVE-CHAT", Ok(MessageType::LiveChat)),
            ("Live_Chat", Ok(MessageType::LiveChat)),
            ("ivr_call", Ok(MessageType::IvrCall)),
            ("campaign voicemail", Ok(MessageType::CampaignVoiceMail)),
            ("TikTok", Ok(MessageType::TikTok)),
            ("all in one chat", Ok(MessageType::AllInOneChat)),
            ("form_submission", Ok(MessageType::FormSubmission)),
            ("Text", Err(Some(MessageType::Sms))),
            ("e-mail", Ok(MessageType::Email)),
            ("mail", Err(Some(MessageType::Email))),
            ("Emial", Err(Some(MessageType::Email))),
            ("facebook", Err(Some(MessageType::Fb))),
            ("phone call", Err(Some(MessageType::Call))),
            ("carrier pigeon", Err(None)),
            ("", Err(None)),
        ];
        for (input, want) in cases {
            assert_eq!(MessageType::parse_lenient(input), *want, "{input:?}");
        }
    }

    #[test]
    fn every_type_round_trips_through_its_spelling() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::parse_lenient(t.as_str()), Ok(*t));
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        for s in CallStatus::ALL {
            assert_eq!(CallStatus::parse_lenient(s.as_str()), Ok(*s));
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn direction_spellings() {
        let cases: &[(&str, Result<Direction, Option<Direction>>)] = &[
            ("inbound", Ok(Direction::Inbound)),
            ("Inbound", Ok(Direction::Inbound)),
            ("OUTBOUND", Ok(Direction::Outbound)),
            ("incoming", Err(Some(Direction::Inbound))),
            ("sent", Err(Some(Direction::Outbound))),
            ("inbund", Err(Some(Direction::Inbound))),
            ("sideways", Err(None)),
        ];
        for (input, want) in cases {
            assert_eq!(Direction::parse_lenient(input), *want, "{input:?}");
        }
    }

    #[test]
    fn call_status_spellings() {
        let cases: &[(&str, Result<CallStatus, Option<CallStatus>>)] = &[
            ("no-answer", Ok(CallStatus::NoAnswer)),
            ("No Answer", Ok(CallStatus::NoAnswer)),
            ("no_answer", Ok(CallStatus::NoAnswer)),
            ("Completed", Ok(CallStatus::Completed)),
            ("cancelled", Err(Some(CallStatus::Canceled))),
            ("missed", Err(Some(CallStatus::NoAnswer))),
            ("hung up", Err(None)),
        ];
        for (input, want) in cases {
            assert_eq!(CallStatus::parse_lenient(input), *want, "{input:?}");
        }
    }

    #[test]
    fn edit_distances() {
        for (a, b, d) in [
            ("", "", 0),
            ("sms", "sms", 0),
            ("sms", "smss", 1),
            ("emial", "email", 2),
            ("kitten", "sitting", 3),
            ("", "abc", 3),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
        }
    }

    #[test]
    fn empty_fields_are_left_out_and_direction_is_always_sent() {
        let m = InboundMessage {
            kind: MessageType::Sms,
            conversation_id: "c1".into(),
            contact_id: "k1".into(),
            message: Some("hi".into()),
            direction: Direction::Outbound,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"SMS","conversationId":"c1","contactId":"k1","message":"hi","direction":"outbound"}"#
        );
    }
}

//! How a message's `type` (what the inbound endpoint takes) shows in what the read endpoints
//! give back (`messageType`, and the numeric `type` of `GetMessageResponseDto`). The spec names
//! both enums but not how one becomes the other; this is the reading chosen, in one table that
//! the sandbox files messages by and read-back matches on.

/// `(inbound type, messageType, numeric type)`. The numbers are the 1-based positions in the
/// spec's `messageType` enum without `TYPE_RCS` (a later addition): the spec's own remark
/// "type 1 and 10" for calls and voicemails fits them.
const KINDS: [(&str, &str, u32); 17] = [
    ("SMS", "TYPE_SMS", 2),
    ("RCS", "TYPE_RCS", 42),
    ("Email", "TYPE_EMAIL", 3),
    ("WhatsApp", "TYPE_WHATSAPP", 19),
    ("GMB", "TYPE_GMB", 15),
    ("IG", "TYPE_INSTAGRAM", 18),
    ("FB", "TYPE_FACEBOOK", 11),
    ("Custom", "TYPE_CUSTOM_PROVIDER_SMS", 22),
    ("WebChat", "TYPE_WEBCHAT", 5),
    ("Live_Chat", "TYPE_LIVE_CHAT", 29),
    ("Call", "TYPE_CALL", 1),
    ("IVR_Call", "TYPE_IVR_CALL", 24),
    ("Campaign_Call", "TYPE_CAMPAIGN_CALL", 8),
    ("Campaign_VoiceMail", "TYPE_CAMPAIGN_VOICEMAIL", 10),
    ("TIKTOK", "TYPE_TIKTOK", 37),
    ("ALL_IN_ONE_CHAT", "TYPE_LIVE_CHAT", 29),
    ("FORM_SUBMISSION", "TYPE_FORM_SUBMISSION", 40),
];

/// The `messageType` and numeric `type` a message posted with inbound `type` is read back with
/// (the sandbox's filing); `TYPE_SMS` for a type it does not know.
pub fn read_kind(inbound: &str) -> (&'static str, u32) {
    KINDS
        .iter()
        .find(|(t, _, _)| *t == inbound)
        .map_or(("TYPE_SMS", 2), |(_, m, n)| (*m, *n))
}

/// Whether a message read back as `message_type` can be one posted as `inbound`. A custom
/// provider's messages may read as any `TYPE_CUSTOM_*`, a call as a custom call too; the
/// all-in-one chat's reading is not known, so any type passes for it.
pub fn kind_matches(inbound: &str, message_type: &str) -> bool {
    match inbound {
        "Custom" => message_type.starts_with("TYPE_CUSTOM_"),
        "Call" => matches!(message_type, "TYPE_CALL" | "TYPE_CUSTOM_CALL"),
        "ALL_IN_ONE_CHAT" => true,
        other => read_kind(other).0 == message_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{MessageType, SpecEnum};

    #[test]
    fn every_inbound_type_has_a_reading_that_matches_itself() {
        for kind in MessageType::VALUES {
            let name = kind.as_str();
            assert!(KINDS.iter().any(|(t, _, _)| *t == name), "{name}");
            assert!(kind_matches(name, read_kind(name).0), "{name}");
        }
        assert!(!kind_matches("SMS", "TYPE_EMAIL"));
        assert!(kind_matches("Custom", "TYPE_CUSTOM_EMAIL"));
        assert!(!kind_matches("Call", "TYPE_SMS"));
        assert_eq!(read_kind("Call"), ("TYPE_CALL", 1));
    }
}

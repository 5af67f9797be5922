//! Domain types. Each newtype is produced by a `parse` that checks it once, so code
//! that holds one never has to check again.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Characters that change how text looks without being visible themselves (zero-width
/// characters, bidirectional overrides, the soft hyphen): refused in emails and names,
/// where they only serve to make one string pass for another.
fn is_invisible_or_bidi(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Why a value could not become a domain type; the message is shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub &'static str);

/// A user's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

impl UserId {
    /// A fresh, time-ordered id for a new user.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for UserId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for UserId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ParseError("is not a valid user id (UUID)"))
    }
}

/// An email address as the user typed it. Uniqueness is case-insensitive: compare
/// with [`Email::normalized`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Longest address RFC 5321 allows in a path.
    pub const MAX_LEN: usize = 254;

    /// Accepts `local@domain.tld` with no spaces or control characters.
    ///
    /// # Errors
    /// A [`ParseError`] saying what is wrong.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(ParseError("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(ParseError("must be at most 254 characters"));
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible_or_bidi(c))
        {
            return Err(ParseError(
                "must not contain spaces, control or invisible characters",
            ));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(ParseError("must be an email address like name@example.com"));
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
            return Err(ParseError("must be an email address like name@example.com"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is checked on: ASCII letters lower-cased, everything else
    /// kept. Full Unicode lower-casing would let look-alikes collide (the Kelvin sign
    /// `K` lower-cases to `k`), so one account could claim another's address.
    pub fn normalized(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    /// Longest name accepted, in characters.
    pub const MAX_CHARS: usize = 100;

    /// # Errors
    /// A [`ParseError`] saying what is wrong.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(ParseError("must not be empty"));
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(ParseError("must be at most 100 characters"));
        }
        if s.chars().any(|c| c.is_control() || is_invisible_or_bidi(c)) {
            return Err(ParseError(
                "must not contain control or invisible characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a notification's event, e.g. `order.shipped`: 1 to 64 characters of
/// letters, digits and `._:-`, so clients can switch on it safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventName(String);

impl EventName {
    /// # Errors
    /// A [`ParseError`] saying what is wrong.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(ParseError("must be 1 to 64 characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(ParseError("may contain only letters, digits and . _ : -"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The event name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A registered user as the API shows it (never with the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id.
    pub id: UserId,
    /// Address as given at signup.
    pub email: Email,
    /// Display name.
    pub name: UserName,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
}

/// A notification id. Per user they grow in commit order, which is what lets a client
/// resume after the last id it saw without gaps.
pub type NotificationId = i64;

/// Who a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// One user, stored in their history.
    User(UserId),
    /// Every connected session; not part of any user's history.
    Broadcast,
}

/// A stored notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// Id, ascending per user in commit order.
    pub id: NotificationId,
    /// The recipient; `None` for a broadcast.
    pub user_id: Option<UserId>,
    /// Event name.
    pub event: EventName,
    /// The JSON object the publisher sent, kept as raw text so it is never re-encoded.
    pub payload: Box<RawValue>,
    /// Commit time.
    pub created_at: DateTime<Utc>,
}

/// A notification to be stored.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Recipient.
    pub audience: Audience,
    /// Event name.
    pub event: EventName,
    /// Raw JSON object.
    pub payload: Box<RawValue>,
    /// Deduplicates internal publishes (e.g. one welcome per user): a second insert
    /// with the same key returns the first notification instead of a new one.
    pub dedupe_key: Option<String>,
}

#[derive(Serialize)]
struct NotificationFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: NotificationId,
    event: &'a str,
    payload: &'a RawValue,
    created_at: &'a DateTime<Utc>,
}

impl Notification {
    /// The WebSocket text frame for this notification, encoded once and shared by every
    /// session that receives it.
    pub fn to_frame(&self) -> bytestring::ByteString {
        let frame = NotificationFrame {
            kind: "notification",
            id: self.id,
            event: self.event.as_str(),
            payload: &self.payload,
            created_at: &self.created_at,
        };
        // Serializing plain strings, an integer and already-valid raw JSON cannot fail.
        serde_json::to_string(&frame).unwrap_or_default().into()
    }
}

/// The bus topics of DESIGN §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A user signed up (written through the outbox).
    UserCreated,
    /// A notification was stored and should reach connected sessions.
    Notifications,
    /// A user did something (login, connect, message).
    UserActivity,
    /// Another service reports an API hit.
    ApiHit,
    /// Mail that failed for good.
    EmailDlq,
    /// Notification-topic messages that could not be handled.
    NotificationsDlq,
}

impl Topic {
    /// Every topic, for creating them at start-up.
    pub const ALL: [Topic; 6] = [
        Topic::UserCreated,
        Topic::Notifications,
        Topic::UserActivity,
        Topic::ApiHit,
        Topic::EmailDlq,
        Topic::NotificationsDlq,
    ];

    /// The topic's name on the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::UserCreated => "user.created",
            Topic::Notifications => "notifications",
            Topic::UserActivity => "user.activity",
            Topic::ApiHit => "api.hit",
            Topic::EmailDlq => "email.dlq",
            Topic::NotificationsDlq => "notifications.dlq",
        }
    }

    /// Where messages of this topic go when they cannot be handled.
    pub fn dead_letter(self) -> Topic {
        match self {
            Topic::Notifications => Topic::NotificationsDlq,
            _ => Topic::EmailDlq,
        }
    }

    /// Parses a topic name.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message read from the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// Topic it was read from.
    pub topic: Topic,
    /// Partition it was read from (always 0 on the embedded bus).
    pub partition: i32,
    /// Position in the partition; committed once handled.
    pub offset: i64,
    /// Partitioning key: the user id, or empty for broadcasts.
    pub key: String,
    /// JSON body with an `event_id`.
    pub payload: Bytes,
}

/// The `user.created` event, written in the signup transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserCreated {
    /// Deduplication id.
    pub event_id: Uuid,
    /// The new user.
    pub user: User,
}

/// The `notifications` topic event: a stored notification to push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationStored {
    /// Deduplication id.
    pub event_id: Uuid,
    /// The stored notification.
    pub notification: Notification,
}

/// Longest id accepted in an activity event (ids from other services are opaque).
pub const MAX_ACTIVITY_ID_LEN: usize = 256;
/// Most users one activity event may name.
pub const MAX_ACTIVITY_BATCH: usize = 1_000;

/// What made a user count as active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivitySource {
    /// A successful login.
    Login,
    /// A WebSocket session opened.
    Connect,
    /// A frame from a connected client.
    Message,
    /// Another service reported an API hit.
    ApiHit,
}

/// A `user.activity` or `api.hit` event: these users were active at `at`. Other
/// services publish `api.hit` in this shape, with either `user_id` or `user_ids`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityEvent {
    /// Deduplication id (counting is idempotent, so it is optional for publishers).
    #[serde(default)]
    pub event_id: Option<Uuid>,
    /// One active user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Several active users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<String>,
    /// When (the UTC day counted); the time of handling when absent.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// What they did.
    #[serde(default)]
    pub source: Option<ActivitySource>,
}

impl ActivityEvent {
    /// Every user the event names, checked: at least one, at most
    /// [`MAX_ACTIVITY_BATCH`], each non-empty and at most [`MAX_ACTIVITY_ID_LEN`] bytes.
    ///
    /// # Errors
    /// A description of what is wrong, for the dead letter.
    pub fn users(&self) -> Result<Vec<&str>, String> {
        let users: Vec<&str> = self
            .user_id
            .iter()
            .chain(self.user_ids.iter())
            .map(String::as_str)
            .collect();
        if users.is_empty() {
            return Err("names no user: set user_id or user_ids".into());
        }
        if users.len() > MAX_ACTIVITY_BATCH {
            return Err(format!("names more than {MAX_ACTIVITY_BATCH} users"));
        }
        if let Some(bad) = users
            .iter()
            .find(|u| u.is_empty() || u.len() > MAX_ACTIVITY_ID_LEN)
        {
            return Err(format!(
                "user id of {} bytes: ids must have 1 to {MAX_ACTIVITY_ID_LEN}",
                bad.len()
            ));
        }
        Ok(users)
    }
}

/// A row of the transactional outbox.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Outbox row id (0 before insert).
    pub id: i64,
    /// Topic to publish on.
    pub topic: Topic,
    /// Bus key.
    pub key: String,
    /// JSON body.
    pub payload: Bytes,
}

/// An email waiting to go out. `id` is stable per logical email (e.g. `welcome-{user}`),
/// so queueing it twice and sending it twice both collapse to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailJob {
    /// Idempotency id, also the Message-ID's local part.
    pub id: String,
    /// Recipient.
    pub to: Email,
    /// Recipient's display name.
    pub to_name: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_parse_accepts_ordinary_addresses_and_rejects_junk() {
        assert!(Email::parse("Ada@Example.com").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@x.io",
            "a b@x.io",
            "ada@x",
            "ada@.x.io",
            "a@b@c.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be rejected");
        }
        let email = Email::parse("Ada@Example.com").unwrap();
        assert_eq!(email.normalized(), "ada@example.com");
        // A look-alike does not collide with the real address.
        let kelvin = Email::parse("\u{212A}elly@x.com").unwrap();
        assert_ne!(
            kelvin.normalized(),
            Email::parse("kelly@x.com").unwrap().normalized()
        );
        assert!(Email::parse("ad\u{200B}a@x.com").is_err());
        assert!(Email::parse("ada@x\u{202E}moc.com").is_err());
    }

    #[test]
    fn user_name_is_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"x".repeat(101)).is_err());
        assert!(UserName::parse("a\u{0007}b").is_err());
        assert!(UserName::parse("Ada\u{202E}nimda").is_err());
        assert_eq!(UserName::parse("שלום").unwrap().as_str(), "שלום");
    }

    #[test]
    fn event_names_are_restricted_to_a_safe_alphabet() {
        assert!(EventName::parse("order.shipped:v2").is_ok());
        assert!(EventName::parse("").is_err());
        assert!(EventName::parse("no spaces").is_err());
        assert!(EventName::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn notification_frame_embeds_the_payload_verbatim() {
        let n = Notification {
            id: 7,
            user_id: None,
            event: EventName::parse("e").unwrap(),
            payload: RawValue::from_string(r#"{"a":[1,2]}"#.into()).unwrap(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let v: serde_json::Value = serde_json::from_str(&n.to_frame()).unwrap();
        assert_eq!(v["type"], "notification");
        assert_eq!(v["id"], 7);
        assert_eq!(v["payload"]["a"][1], 2);
    }
}

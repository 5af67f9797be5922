//! The embedded mail transport: each email becomes an RFC 5322 `.eml` file under
//! `data/outbox/`, built with lettre. The file is named after the mail's stable id and
//! written atomically (temp file + rename), so sending the same mail twice leaves one
//! file: exactly one welcome email per user even across crashes and redelivery.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use lettre::message::{header::ContentType, Mailbox};
use lettre::Message;

use herald_actors::domain::MailJob;
use herald_actors::ports::{MailError, MailTransport};

/// Writes mail as `.eml` files.
pub struct FileMailTransport {
    dir: PathBuf,
    from: Mailbox,
}

impl FileMailTransport {
    /// A transport writing into `dir` (created if missing) with sender `from`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(dir: &Path, from: Mailbox) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            from,
        })
    }
}

/// The Message-ID domain, from the sender's address.
fn message_id(job: &MailJob, from: &Mailbox) -> String {
    format!("<{}@{}>", job.id, from.email.domain())
}

/// Builds the RFC 5322 message for `job`.
///
/// # Errors
/// [`MailError::Undeliverable`] when the recipient is not an address lettre accepts.
pub fn build_message(job: &MailJob, from: &Mailbox) -> Result<Message, MailError> {
    let to_address = job
        .to
        .as_str()
        .parse()
        .map_err(|e| MailError::Undeliverable(format!("invalid recipient: {e}")))?;
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(Some(job.to_name.clone()), to_address))
        .subject(job.subject.clone())
        .message_id(Some(message_id(job, from)))
        .header(ContentType::TEXT_PLAIN)
        .body(job.body.clone())
        .map_err(|e| MailError::Undeliverable(format!("cannot build message: {e}")))
}

fn file_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.eml")
}

#[async_trait]
impl MailTransport for FileMailTransport {
    async fn send(&self, job: &MailJob) -> Result<(), MailError> {
        let bytes = build_message(job, &self.from)?.formatted();
        let target = self.dir.join(file_name(&job.id));
        let temp = self.dir.join(format!(".{}.tmp", file_name(&job.id)));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = fs::File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temp, &target)
        })
        .await
        .map_err(|e| MailError::Transient(e.to_string()))?
        .map_err(|e| MailError::Transient(format!("writing mail file: {e}")))
    }
}

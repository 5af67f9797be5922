//! The production mail transport: SMTP through lettre, with TLS (implicit or STARTTLS)
//! and optional authentication. Each mail keeps the Message-ID derived from its stable
//! id, so a retry after a crash between the server's acceptance and our bookkeeping
//! is recognisable as the same email downstream.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use herald_actors::domain::MailJob;
use herald_actors::ports::{MailError, MailTransport};

use super::file::build_message;

/// How the connection to the relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum TlsMode {
    /// Plain text (a relay on localhost or a private network only).
    None,
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

impl TryFrom<String> for TlsMode {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        crate::config::choose(
            "smtp tls mode",
            &value,
            &[
                ("none", Self::None),
                ("starttls", Self::Starttls),
                ("tls", Self::Tls),
            ],
        )
    }
}

/// Where and how to reach the relay.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Relay host name (also the TLS server name).
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Connection security.
    pub tls: TlsMode,
    /// Login, when the relay requires one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<SecretString>,
    /// Deadline of one whole send, from connecting to the end of `DATA`.
    pub timeout: Duration,
}

/// Sends mail through an SMTP relay.
pub struct SmtpMailTransport {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl SmtpMailTransport {
    /// A transport for `settings`, sending as `from`. Each send opens its own
    /// connection: mail is rare next to pushes, and lettre's pool spawns a task when
    /// dropped, which panics when the runtime is already gone (at shutdown).
    ///
    /// # Errors
    /// When the TLS parameters cannot be built for `host`.
    pub fn new(settings: &SmtpSettings, from: Mailbox) -> Result<Self, MailError> {
        let tls = match settings.tls {
            TlsMode::None => Tls::None,
            TlsMode::Starttls => Tls::Required(tls_parameters(&settings.host)?),
            TlsMode::Tls => Tls::Wrapper(tls_parameters(&settings.host)?),
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
                .port(settings.port)
                .tls(tls)
                .timeout(Some(settings.timeout));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            timeout: settings.timeout,
        })
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters, MailError> {
    TlsParameters::new(host.to_owned())
        .map_err(|e| MailError::Permanent(format!("TLS setup for {host}: {e}")))
}

/// Sorts an SMTP failure for the retry logic: 5xx answers are permanent, everything
/// else (4xx, refused or dropped connections, timeouts) is worth retrying.
fn classify(err: &lettre::transport::smtp::Error) -> MailError {
    if err.is_permanent() {
        MailError::Permanent(err.to_string())
    } else {
        MailError::Transient(err.to_string())
    }
}

#[async_trait]
impl MailTransport for SmtpMailTransport {
    async fn send(&self, job: &MailJob) -> Result<(), MailError> {
        let message = build_message(job, &self.from)?;
        // lettre bounds connecting and each command; a relay that trickles bytes or
        // never answers must not hold the mailer either.
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(sent) => sent.map(|_| ()).map_err(|e| classify(&e)),
            Err(_) => Err(MailError::Transient(format!(
                "the relay did not finish within {} s",
                self.timeout.as_secs_f32()
            ))),
        }
    }
}

//! Mail transports against real receivers: `.eml` files, and SMTP to a real listener.

use std::time::Duration;

use herald::backends::mail::smtp::{SmtpMailTransport, SmtpSettings, TlsMode};
use herald_actors::domain::{Email, MailJob};
use herald_actors::ports::{MailError, MailTransport};

use crate::smtp_sink::{Behaviour, SmtpSink};

fn welcome() -> MailJob {
    MailJob {
        id: "welcome-0193".into(),
        to: Email::parse("ada@example.com").unwrap(),
        to_name: "Ada".into(),
        subject: "Welcome to Herald".into(),
        body: "Hello Ada,\n.\nwelcome!\n".into(),
        attempts: 0,
    }
}

fn smtp(sink: &SmtpSink) -> SmtpMailTransport {
    let settings = SmtpSettings {
        host: "127.0.0.1".into(),
        port: sink.port,
        tls: TlsMode::None,
        username: None,
        password: None,
        timeout: Duration::from_secs(5),
    };
    SmtpMailTransport::new(&settings, "Herald <herald@example.com>".parse().unwrap()).unwrap()
}

#[actix_web::test]
async fn smtp_delivers_the_mail_with_recipient_subject_and_body() {
    let sink = SmtpSink::start().await;
    smtp(&sink).send(&welcome()).await.unwrap();
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    assert_eq!(mail.from, "<herald@example.com>");
    assert_eq!(mail.to, vec!["<ada@example.com>".to_owned()]);
    assert!(mail.data.contains("To: Ada <ada@example.com>"));
    assert!(mail.data.contains("Subject: Welcome to Herald"));
    assert!(mail.data.contains("Message-ID: <welcome-0193@example.com>"));
    // Quoted-printable may wrap lines; the body's words are all there.
    assert!(mail.data.contains("Hello Ada,") && mail.data.contains("welcome!"));
}

#[actix_web::test]
async fn smtp_failures_are_classified_for_retry() {
    let sink = SmtpSink::start().await;
    let transport = smtp(&sink);
    sink.set(Behaviour::Defer);
    assert!(matches!(
        transport.send(&welcome()).await,
        Err(MailError::Transient(_))
    ));
    sink.set(Behaviour::Reject);
    assert!(matches!(
        transport.send(&welcome()).await,
        Err(MailError::Permanent(_))
    ));
    sink.set(Behaviour::Accept);
    transport.send(&welcome()).await.unwrap();
    assert_eq!(sink.messages().len(), 1);
}

#[actix_web::test]
async fn a_refused_connection_is_a_transient_failure() {
    // Bind and drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
        username: None,
        password: None,
        timeout: Duration::from_secs(2),
    };
    let transport = SmtpMailTransport::new(&settings, "h@example.com".parse().unwrap()).unwrap();
    assert!(matches!(
        transport.send(&welcome()).await,
        Err(MailError::Transient(_))
    ));
}

//! A small real SMTP server for tests: it speaks enough RFC 5321 for lettre (EHLO,
//! MAIL, RCPT, DATA, RSET, NOOP, QUIT) over TCP on loopback and keeps what it accepted.
//! It can be told to refuse mail, so tests can watch retries.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// How the sink answers `MAIL FROM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Accept,
    /// 451: try again later.
    Defer,
    /// 550: never.
    Reject,
    /// Closes every connection at once, before the greeting (a relay that is down).
    Refuse,
    /// Greets, then never answers `MAIL FROM` (a relay that hangs).
    Hang,
}

/// A running sink.
#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink = Self {
            port: listener.local_addr().expect("addr").port(),
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(Behaviour::Accept)),
            connections: Arc::default(),
        };
        let server = sink.clone();
        actix_web::rt::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                server
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if *server.behaviour.lock().unwrap() == Behaviour::Refuse {
                    drop(socket);
                    continue;
                }
                actix_web::rt::spawn(server.clone().session(socket));
            }
        });
        sink
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Connections accepted so far (every send opens one).
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    async fn session(self, socket: tokio::net::TcpStream) {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        if write.write_all(b"220 sink ESMTP ready\r\n").await.is_err() {
            return;
        }
        let mut from = String::new();
        let mut to = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let upper = line.to_ascii_uppercase();
            let answer: &[u8] = if upper.starts_with("EHLO") {
                b"250-sink\r\n250 8BITMIME\r\n"
            } else if upper.starts_with("HELO")
                || upper.starts_with("RSET")
                || upper.starts_with("NOOP")
            {
                b"250 ok\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                // Copied out: the guard must not live across the awaits below.
                let behaviour = *self.behaviour.lock().unwrap();
                match behaviour {
                    Behaviour::Accept => {
                        from = line[10..].trim().to_owned();
                        to.clear();
                        b"250 ok\r\n"
                    }
                    Behaviour::Defer | Behaviour::Refuse => b"451 4.3.0 try again later\r\n",
                    Behaviour::Reject => b"550 5.7.1 rejected\r\n",
                    Behaviour::Hang => {
                        // Hold the connection open without a word until the client
                        // gives up.
                        while let Ok(Some(_)) = lines.next_line().await {}
                        return;
                    }
                }
            } else if upper.starts_with("RCPT TO:") {
                to.push(line[8..].trim().to_owned());
                b"250 ok\r\n"
            } else if upper == "DATA" {
                if write
                    .write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut data = String::new();
                while let Ok(Some(body)) = lines.next_line().await {
                    if body == "." {
                        break;
                    }
                    data.push_str(body.strip_prefix('.').unwrap_or(&body));
                    data.push('\n');
                }
                self.received.lock().unwrap().push(Received {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                });
                b"250 queued\r\n"
            } else if upper.starts_with("QUIT") {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"502 command not implemented\r\n"
            };
            if write.write_all(answer).await.is_err() {
                return;
            }
        }
    }
}

//! A fleet of authenticated WebSocket sessions, one per user, each connected from its
//! own loopback source address (127.1.x.y) and read by its own task.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use herald_actors::domain::UserId;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stats::Tally;
use crate::target::Target;

/// Attempts per session before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 3;
/// Time one connection attempt (TCP + upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Token lifetime: longer than any run.
pub const TOKEN_TTL_SECS: u64 = 6 * 3600;
/// Read buffer per client connection; tungstenite's default (128 KiB) would cost the
/// harness gigabytes at 20,000 sessions.
const READ_BUFFER: usize = 8 * 1024;

/// The loopback source address of session `i`: every session gets its own, up to
/// 64,516 sessions (127.1.1.1 … 127.1.254.254), so no per-address limit (ephemeral
/// ports, per-IP rate limits) applies to the fleet as a whole.
pub fn source_for(i: usize) -> Ipv4Addr {
    let a = u8::try_from((i / 254) % 254 + 1).unwrap_or(1);
    let b = u8::try_from(i % 254 + 1).unwrap_or(1);
    Ipv4Addr::new(127, 1, a, b)
}

/// Connects one authenticated session from `source`.
///
/// # Errors
/// When the TCP connection or the upgrade fails.
pub async fn connect(
    server: SocketAddr,
    source: Ipv4Addr,
    token: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let tcp = socket.connect(server).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{server}/ws?token={token}");
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    Ok(ws)
}

/// Open sessions and the tasks reading them.
pub struct Fleet {
    /// The user of each open session (session `i` is user `users[i]`).
    pub users: Vec<UserId>,
    /// Sessions that could not be opened.
    pub failed: usize,
    /// Sessions still open (a session closed by the server leaves this count).
    pub live: Arc<AtomicUsize>,
    /// Sessions the server closed while the harness still wanted them.
    pub closed_by_server: Arc<AtomicU64>,
    /// Whether session `i` is still open.
    alive: Vec<Arc<AtomicBool>>,
    tally: watch::Sender<Arc<Tally>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Opens `count` sessions, `concurrency` handshakes at a time, each for a fresh
    /// user with a token minted by `target`. Frames are counted in `tally`.
    ///
    /// # Errors
    /// When no token can be minted.
    pub async fn open(
        target: &Target,
        count: usize,
        concurrency: usize,
        tally: Arc<Tally>,
    ) -> anyhow::Result<Self> {
        let (tally_tx, tally_rx) = watch::channel(tally);
        let (stop_tx, stop_rx) = watch::channel(false);
        let live = Arc::new(AtomicUsize::new(0));
        let closed_by_server = Arc::new(AtomicU64::new(0));
        let mut planned = Vec::with_capacity(count);
        for i in 0..count {
            let user = UserId::new();
            let token = target
                .tokens
                .issue(user, "", TOKEN_TTL_SECS)
                .context("while minting a session token")?;
            planned.push((i, user, token));
        }
        let server = target.addr;
        let opened = futures_util::stream::iter(planned)
            .map(|(i, user, token)| async move {
                for attempt in 0..CONNECT_ATTEMPTS {
                    let once = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        connect(server, source_for(i), &token),
                    )
                    .await;
                    match once {
                        Ok(Ok(ws)) => return Some((user, ws)),
                        Ok(Err(err)) if attempt + 1 == CONNECT_ATTEMPTS => {
                            eprintln!("session {i}: {err:#}");
                        }
                        Err(_) if attempt + 1 == CONNECT_ATTEMPTS => {
                            eprintln!("session {i}: connect timed out");
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50 << attempt)).await,
                    }
                }
                None
            })
            .buffer_unordered(concurrency.max(1));
        let mut tasks = JoinSet::new();
        let mut users = Vec::with_capacity(count);
        let mut alive = Vec::with_capacity(count);
        let mut failed = 0;
        futures_util::pin_mut!(opened);
        while let Some(result) = opened.next().await {
            let Some((user, ws)) = result else {
                failed += 1;
                continue;
            };
            let index = users.len();
            users.push(user);
            let flag = Arc::new(AtomicBool::new(true));
            alive.push(Arc::clone(&flag));
            live.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(read_session(
                index,
                ws,
                flag,
                tally_rx.clone(),
                stop_rx.clone(),
                Arc::clone(&live),
                Arc::clone(&closed_by_server),
            ));
        }
        Ok(Self {
            users,
            failed,
            live,
            closed_by_server,
            alive,
            tally: tally_tx,
            stop: stop_tx,
            tasks,
        })
    }

    /// Sessions open right now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The users whose sessions are still open.
    pub fn live_users(&self) -> Vec<UserId> {
        self.users
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| alive.load(Ordering::Relaxed))
            .map(|(u, _)| *u)
            .collect()
    }

    /// Counts frames in `tally` from now on.
    pub fn count_into(&self, tally: Arc<Tally>) {
        self.tally.send_replace(tally);
    }

    /// Closes every session and waits for the reading tasks to end.
    pub async fn close(mut self) {
        self.stop.send_replace(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
    }
}

/// Reads one session until the harness stops or the server closes it. Pings are
/// answered by tungstenite while reading.
async fn read_session(
    index: usize,
    mut ws: WebSocketStream<TcpStream>,
    alive: Arc<AtomicBool>,
    tally: watch::Receiver<Arc<Tally>>,
    mut stop: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
    closed_by_server: Arc<AtomicU64>,
) {
    let mut last_id = i64::MIN;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let current = Arc::clone(&tally.borrow());
                    current.on_frame(index, text.as_str(), &mut last_id);
                }
                end @ (Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {
                    if !*stop.borrow() && closed_by_server.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("session {index} ended by the server: {end:?}");
                    }
                    break;
                }
                Some(Ok(_)) => {}
            },
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                // Give the close handshake a moment; the socket is dropped either way.
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while let Some(Ok(_)) = ws.next().await {}
                }).await;
                break;
            }
        }
    }
    alive.store(false, Ordering::Relaxed);
    live.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_distinct_loopback_addresses() {
        let all: std::collections::HashSet<_> = (0..20_000).map(source_for).collect();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|a| a.is_loopback()));
    }
}

//! Herald's actor system: the domain types, the typed messages between actors, the
//! port traits that backends implement, and every actor.
//!
//! Dependencies point inward: this crate knows nothing about SQLite, Kafka, Redis or
//! SMTP. The app crate implements the ports in [`ports`] and wires the actors.
//!
//! # Layout
//! - [`domain`]: newtypes that parse (`Email`, `UserName`, `EventName`, `UserId`) and
//!   the records that travel (`User`, `Notification`, bus events, mail).
//! - [`messages`]: the typed actor messages (`Connect`, `Deliver`, `Push`, …).
//! - [`ports`]: `Store`, `Bus`, `MailTransport`, `RegistryMirror` — what the actors
//!   need from outside.
//! - [`health`]: the per-actor status board behind `/api/health/actors` and `/readyz`.
//! - [`supervisor`]: restart pacing and the restart budget behind `failed`.
//! - [`breaker`]: the circuit breaker around the mail transport.
//! - [`backoff`]: exponential backoff with full jitter, shared by retrying actors.
//! - [`frame_guard`]: refuses WebSocket frames by their announced length, before
//!   their payload is buffered.
//! - [`pump`]: the batch-draining loop shared by the outbox relay and the mailer.
//! - Actors, one per file: [`session`] (`WsSession`), [`registry`] (`Registry`),
//!   [`fanout`] (`Fanout`, one per HTTP worker arbiter, for broadcasts),
//!   [`writer`] (`NotificationWriter`), [`consumer`] (`Consumer`, one per topic),
//!   [`outbox_relay`] (`OutboxRelay`), [`mailer`] (`Mailer`), [`janitor`] (`Janitor`),
//!   [`metrics`] (`Metrics`), [`activity`] (`ActivityTracker`).
//! - Topic handlers the consumers run: [`welcome`] (`user.created`), [`delivery`]
//!   (`notifications`) and [`analytics`] (`user.activity`, `api.hit`).

pub mod activity;
pub mod analytics;
pub mod backoff;
pub mod breaker;
pub mod consumer;
pub mod delivery;
pub mod domain;
pub mod fanout;
pub mod frame_guard;
pub mod health;
pub mod janitor;
pub mod mailer;
pub mod messages;
pub mod metrics;
pub mod outbox_relay;
pub mod ports;
pub mod pump;
pub mod registry;
pub mod session;
pub mod supervisor;
pub mod welcome;
pub mod writer;

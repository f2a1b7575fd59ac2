//! rowcast: a change-data-capture notifier for PostgreSQL.
//!
//! Applications write plain SQL to their tables. Triggers installed by the DBA capture
//! every change into a log in the same transaction; this crate turns the log into typed
//! events and pushes them to WebSocket, SSE and HTTP-polling subscribers.
//!
//! # Layout
//!
//! The modules follow the data flow:
//!
//! - `migrations/` and `sql/functions/` (SQL, installed by [`migrate`]): the capture
//!   trigger writes `rowcast.events` in the writer's transaction; the sequencer's batch,
//!   the registry and the event rules live there too.
//! - [`capture::sequencer`] gives committed events gap-free positions in `rowcast.log`.
//! - [`capture::tail`] follows the log on a dedicated connection (LISTEN, then read).
//! - [`capture::bus`] (optional, NATS JetStream) carries the log from the sequencing
//!   replica's tailer to the other replicas' tailers.
//! - [`capture::log`] is the log's read side, for the tailer and for replay: changes,
//!   the event rules they were captured with, and what the hub publishes for each.
//! - [`capture::prune`] deletes what retention no longer keeps, by position and age.
//! - [`events`] names a change by its table's rules and serialises its one wire frame;
//!   it reads nothing from the database.
//! - [`hub`] indexes sessions by topic and fans every frame out once per session,
//!   through a [`hub::Sink`] the transport implements.
//! - [`serve`] is the HTTP side: [`serve::ws`], [`serve::sse`] and [`serve::http`], all
//!   resuming through [`serve::replay`]; [`serve::admission`] and [`serve::auth`] decide
//!   who may connect and follow what; health, metrics and the dashboard.
//! - [`follow`] prints the stream in a terminal (`rowcast tail`); [`types`] writes
//!   TypeScript declarations of the watched tables' events (`rowcast types`).
//! - [`app`] starts all of the above; [`config`] holds the settings, [`db`] connection
//!   setup, [`admin`] the DBA commands, [`embedded`] a throwaway PostgreSQL for [`demo`].

pub mod admin;
pub mod app;
pub mod capture;
pub mod config;
pub mod db;
pub mod demo;
pub mod embedded;
pub mod events;
pub mod follow;
pub mod hub;
pub mod metrics;
pub mod migrate;
pub mod serve;
pub mod types;

pub use app::Application;
pub use config::Config;

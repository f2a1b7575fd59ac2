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
//! - `migrations/` (SQL, applied by [`migrate`]): the capture trigger writes
//!   `rowcast.events` in the writer's transaction.
//! - [`capture::sequencer`] gives committed events gap-free positions in `rowcast.log`.
//! - [`capture::tail`] follows the log on a dedicated connection (LISTEN, then read).
//! - [`capture::log`] reads sequenced events (for the tailer and for replay).
//! - [`capture::prune`] deletes what retention no longer keeps, by position and age.
//! - [`events`] maps a captured change, read through its table's domain mapping, to a
//!   typed event (attendance, booking, course, or generic `row.*`) and its wire frame.
//! - [`hub`] indexes sessions by topic and fans every frame out once per session; its
//!   writer tasks write WebSocket sessions' queues straight to their sockets
//!   ([`serve::wire`]).
//! - [`serve`] is the HTTP server: [`serve::ws`] (WebSocket), [`serve::sse`]
//!   (server-sent events) and [`serve::http`] (polling), all resuming through
//!   [`serve::replay`]; [`serve::admission`] and [`serve::auth`] decide who may
//!   connect and follow what; health, metrics and the dashboard ([`serve::web`]).
//! - [`db`] holds connection setup shared by all of the above; [`config`] the settings;
//!   [`admin`] the DBA commands; [`embedded`] a throwaway PostgreSQL for [`demo`].

pub mod admin;
pub mod capture;
pub mod config;
pub mod db;
pub mod demo;
pub mod embedded;
pub mod events;
pub mod hub;
pub mod metrics;
pub mod migrate;
pub mod serve;

pub use config::Config;
pub use serve::Application;

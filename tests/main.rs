//! End-to-end tests against a real PostgreSQL and the real service over WebSocket, SSE
//! and HTTP polling.
//! One binary, so it links once; each test has a database of its own.

mod support;

mod bench;
mod bus;
mod cli;
mod dashboard;
mod delivery;
mod domains;
mod faults;
mod first_screen;
mod hardening;
mod operator;
mod pipeline;
mod retention;
mod rules;
mod schema;
mod schema_changes;
mod security;
mod sequencing;
mod session;
mod setwise;
mod startup;
mod trust;
mod wake;

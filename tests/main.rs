//! End-to-end tests against a real PostgreSQL and the real service over WebSocket.
//! One binary, so it links once; each test has a database of its own.

mod support;

mod cli;
mod dashboard;
mod faults;
mod operator;
mod pipeline;
mod schema;
mod security;
mod sequencing;
mod session;

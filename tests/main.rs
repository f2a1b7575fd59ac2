//! End-to-end tests against a real PostgreSQL and the real service over WebSocket, SSE
//! and HTTP polling.
//! One binary, so it links once; each test has a database of its own.

mod support;

mod delivery;
mod faults;
mod pipeline;
mod retention;
mod schema;
mod sequencing;
mod session;

//! End-to-end tests against a real PostgreSQL and the real service over WebSocket.
//! One binary, so it links once; each test has a database of its own.

mod support;

mod bench;
mod faults;
mod pipeline;
mod schema;
mod sequencing;
mod session;
mod wake;

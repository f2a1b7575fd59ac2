//! Rebuilds the crate when a migration changes: `src/migrate.rs` embeds `migrations/`
//! at compile time, which cargo does not see as a source of the crate by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

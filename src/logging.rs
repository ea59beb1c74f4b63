//! Logging setup. `RUST_LOG` (or `CUTOVER_LOG`) selects what is shown; the default is `info`.
//! Nothing logged anywhere in the crate carries a password or a token: those travel as
//! [`crate::secret::Secret`], which prints as `***`.

/// Installs the tracing subscriber (stderr, compact). Safe to call more than once.
pub fn init() {
    let filter = std::env::var("CUTOVER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    // sled logs at trace level from thread-local destructors while threads exit, when the
    // subscriber's own thread-local state may be gone; that can abort the process at exit.
    // Its internals are of no use to an admin, so they stop at info whatever is asked.
    let filter = format!("{filter},sled=info,pagecache=info");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

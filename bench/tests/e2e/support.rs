//! Running the bench, directly and through `fabric bench`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The world of `config/fabric.toml`.
pub const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fabric.toml");

/// Runs the `fabric-bench` binary with `args` and waits for it.
pub fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabric-bench"))
        .args(args)
        .output()
        .expect("the fabric-bench binary runs")
}

/// The `fabric` executable next to `fabric-bench`, where `fabric bench` and the serve suite
/// expect it.
fn fabric_exe() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_fabric-bench"))
        .with_file_name(format!("fabric{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.is_file(),
        "{} is missing: `cargo test --workspace` builds it next to fabric-bench (or run \
         `cargo build -p fabric` first)",
        exe.display()
    );
    exe
}

/// Runs the `fabric` binary next to `fabric-bench` with `args` and waits for it.
pub fn fabric(args: &[&str]) -> Output {
    Command::new(fabric_exe())
        .args(args)
        .output()
        .expect("the fabric binary runs")
}

/// A command's stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 paths")
}

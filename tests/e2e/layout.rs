//! The crate graph keeps its promises (docs/ARCHITECTURE.md): the service never links the
//! simulation, the production binary never links the bench's PostgreSQL client, and an
//! auditor's crate links no ledger writer. Checked with `cargo tree` on the lockfile.

use std::process::Command;

/// The normal dependencies of `package` (features included with `features`), one per line.
fn tree(package: &str, features: bool) -> String {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .args([
            "-e",
            if features {
                "normal,features"
            } else {
                "normal"
            },
        ]);
    let output = command.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo tree prints UTF-8")
}

/// The crates (by name) in a `cargo tree` listing.
fn crates(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

#[test]
fn the_server_does_not_depend_on_the_simulation() {
    let listing = tree("fabric-server", false);
    assert!(crates(&listing).contains(&"fabric-actors"), "{listing}");
    assert!(
        !crates(&listing).contains(&"fabric-sim"),
        "fabric-server must not depend on fabric-sim:\n{listing}"
    );
}

#[test]
fn the_fabric_binary_links_no_postgres_client() {
    let listing = tree("fabric", false);
    assert!(crates(&listing).contains(&"fabric-server"), "{listing}");
    let postgres: Vec<&str> = crates(&listing)
        .into_iter()
        .filter(|name| name.contains("postgres"))
        .collect();
    assert!(postgres.is_empty(), "fabric links {postgres:?}");
}

#[test]
fn the_audit_crate_links_no_ledger_writer() {
    let listing = tree("fabric-audit", true);
    assert!(crates(&listing).contains(&"fabric-ledger"), "{listing}");
    assert!(
        !listing.contains("fabric-ledger feature \"writer\""),
        "fabric-audit must read the ledger without its writer:\n{listing}"
    );
    for writer in ["fabric-actors", "fabric-sim", "actix"] {
        assert!(
            !crates(&listing).contains(&writer),
            "fabric-audit links {writer}"
        );
    }
}

#[test]
fn the_witness_links_no_ledger_writer_and_no_service() {
    let listing = tree("fabric-witness", true);
    assert!(crates(&listing).contains(&"fabric-ledger"), "{listing}");
    assert!(
        !listing.contains("fabric-ledger feature \"writer\""),
        "fabric-witness must read notes and proofs without the ledger's writer:\n{listing}"
    );
    for service in ["fabric-server", "fabric-actors", "fabric-sim"] {
        assert!(
            !crates(&listing).contains(&service),
            "fabric-witness links {service}"
        );
    }
}

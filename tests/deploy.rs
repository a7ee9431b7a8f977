//! The deployment examples (deploy/) are valid: scripts/validate-deploy checks every Kubernetes manifest against
//! the API schemas and every grip-proxy config in them with `--check-config`, using the binary cargo built here.
//!
//! It needs python3 with venv (the validator runs from target/deploy-venv, made from PyPI when missing). Without
//! python3 and venv the test says loudly that it was skipped, except under CI (`CI` set), where it fails: CI must
//! run it.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn deployment_manifests_and_their_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let has_env = root
        .join("target/deploy-venv/bin/kubernetes-validate")
        .exists();
    // Under CI the script runs regardless: as root it installs python3-venv, else it fails, and so does the test.
    if !has_venv && !has_env && std::env::var_os("CI").is_none() {
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED deploy::deployment_manifests_and_their_configs_are_valid: no python3 with venv \
             (apt-get install python3-venv), so scripts/validate-deploy cannot make its virtualenv ***\n"
        );
        return;
    }
    let out = Command::new("bash")
        .arg(root.join("scripts/validate-deploy"))
        .current_dir(root)
        .env("GRIP_PROXY_BIN", env!("CARGO_BIN_EXE_grip-proxy"))
        .output()
        .expect("bash runs scripts/validate-deploy");
    assert!(
        out.status.success(),
        "scripts/validate-deploy failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

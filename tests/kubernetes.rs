//! The Kubernetes manifests (deploy/kubernetes/) against the Kubernetes OpenAPI schema,
//! strictly (an unknown field is an error), with `kubernetes-validate` from PyPI, which
//! carries the schemas of every Kubernetes release: `.ci/run` installs it in
//! target/k8s-venv, so nothing is fetched at test time. A broken copy of each manifest
//! must fail, and the Grafana dashboard must ask only for metrics the daemon exports.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes release the manifests are checked against.
const KUBERNETES: &str = "1.30.0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The validator, or None (after a loud notice) where it is not installed and CI is not
/// set. Under CI=true its absence fails the test.
fn validator() -> Option<PathBuf> {
    let p = std::env::var_os("CUTOVER_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/k8s-venv/bin/kubernetes-validate"));
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} is missing under CI=true (.ci/run installs it)",
            p.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: {} not found; `bash .ci/run` installs it (pip install kubernetes-validate) ***\n",
        p.display()
    );
    None
}

fn validate(tool: &Path, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool)
        .args(["--strict", "--no-warn", "-k", KUBERNETES])
        .args(files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn read(name: &str) -> String {
    std::fs::read_to_string(repo().join("deploy/kubernetes").join(name)).unwrap()
}

#[test]
fn manifests_pass_the_schema_and_broken_ones_fail() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "configmap.yaml",
        "secret.yaml",
        "service.yaml",
        "statefulset.yaml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let Some(tool) = validator() else { return };
    let (ok, text) = validate(&tool, &files);
    assert!(ok, "the manifests fail validation:\n{text}");
    for kind in ["statefulset/cutover", "configmap/", "secret/", "service/"] {
        assert!(text.contains(kind), "{kind} was not validated:\n{text}");
    }

    // Each kind of mistake, in a copy: a misspelt field, a wrong type, an invalid value.
    let dir = tempfile::tempdir().unwrap();
    let broken = [
        (
            "statefulset.yaml",
            "podManagementPolicy: Parallel",
            "podManagmentPolicy: Parallel",
        ),
        ("statefulset.yaml", "replicas: 4", "replicas: four"),
        (
            "statefulset.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: [true]",
        ),
        ("service.yaml", "port: 8443", "port: \"eighty\""),
        ("configmap.yaml", "\ndata:\n", "\ndatas:\n"),
        ("secret.yaml", "stringData:", "stringdata:"),
    ];
    for (file, from, to) in broken {
        let text = read(file);
        assert!(text.contains(from), "{file} has no {from:?}");
        let copy = dir.path().join(file);
        std::fs::write(&copy, text.replacen(from, to, 1)).unwrap();
        let (ok, out) = validate(&tool, &[copy]);
        assert!(!ok, "{file} with {to:?} instead of {from:?} passed:\n{out}");
    }
}

#[test]
fn pods_are_hardened_sharded_and_probed() {
    let sts = read("statefulset.yaml");
    for want in [
        "kind: StatefulSet",
        "podManagementPolicy: Parallel",
        "volumeClaimTemplates:",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "type: RuntimeDefault",
        "path: /healthz",
        "livenessProbe:",
        "readinessProbe:",
        "prometheus.io/scrape: \"true\"",
    ] {
        assert!(sts.contains(want), "statefulset.yaml lacks {want:?}");
    }
    let cm = read("configmap.yaml");
    assert!(cm.contains("shard = \"ordinal/4\"") && sts.contains("replicas: 4"));
    // The config in the ConfigMap is one cutover loads, shard and all.
    let start = cm.find("cutover.toml: |\n").unwrap() + "cutover.toml: |\n".len();
    let end = cm.find("  mailboxes.csv: |").unwrap();
    let toml: String = cm[start..end]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let toml = toml.replace("/etc/cutover/", &format!("{}/", dir.path().display()));
    for f in [
        "secrets/source-admin-password",
        "secrets/oauth-client-secret",
        "secrets/web-password",
        "secrets/web-password-hash",
    ] {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x\n").unwrap();
    }
    std::fs::write(
        dir.path().join("mailboxes.csv"),
        "EmailAddress,UserName,Password\na@example.com,a,\nb@example.com,b,\n",
    )
    .unwrap();
    let cfg = dir.path().join("cutover.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--config")
        .arg(&cfg)
        .args(["fleet", "plan", "--shards", "4", "--no-sizes"])
        .env("HOSTNAME", "cutover-2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's cutover.toml does not load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3/4"));
}

#[test]
fn grafana_dashboard_asks_for_exported_metrics() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let metrics = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();
    let mut exprs = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            exprs += 1;
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("cutover_"))
            {
                let base = name.strip_suffix("_total").unwrap_or(name);
                assert!(
                    metrics.contains(&format!("\"{base}\"")),
                    "{name} in {expr:?} is not a metric of src/metrics.rs"
                );
            }
        }
    }
    assert!(exprs >= 10, "{exprs} queries");
}

//! `keys generate`, `keys list`, `seal` and `unseal` as a binary: a generated key seals with
//! one config and unseals the value back; a changed value, another record and a key file open
//! to others fail with exit 1 and a message naming what is wrong, never the secret.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const RECORD: &str = "/etcd-broker/bindings/i1/b1";
/// Bytes, not text: a final newline and invalid UTF-8 must survive the round trip.
const SECRET: &[u8] = b"pa:ss\xffword\n";

fn ops(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcd-broker-ops"))
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcd-broker-ops runs");
    // A run refused before it reads stdin (a usage error) closes the pipe: not a failure here.
    match child.stdin.take().unwrap().write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
        _ => {}
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A key generated into `dir` as `name`, checked: the file is private and nothing secret was
/// printed.
fn generate(dir: &Path, name: &str) -> PathBuf {
    let out = ops(&["keys", "generate", name, "--dir", path(dir)], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = dir.join(format!("{name}.key"));
    let key = std::fs::read_to_string(&file).unwrap();
    assert_eq!(key.trim_end().len(), 44, "base64 of 32 bytes");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let printed = text(&out.stdout);
    assert!(printed.starts_with(&format!("wrote key '{name}' to {}\n", file.display())), "{printed}");
    assert!(!printed.contains(key.trim_end()) && !text(&out.stderr).contains(key.trim_end()));
    file
}

/// The documented example config with a `[secrets]` table of `keys` (name, file), `active`
/// sealing.
fn config(dir: &Path, active: &str, keys: &[(&str, &Path)]) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/etcd-broker.example.toml");
    let example = std::fs::read_to_string(example).unwrap();
    // The example says `sealing = "off"`; this table replaces it.
    let off = "[secrets]\nsealing = \"off\"\n";
    assert!(example.contains(off), "the example's [secrets] table changed");
    let mut toml = example.replace(off, "");
    toml.push_str(&format!("\n[secrets]\nsealing = \"on\"\nactive = \"{active}\"\n"));
    for (name, file) in keys {
        toml.push_str(&format!("[secrets.keys.{name}]\nfile = \"{}\"\n", file.display()));
    }
    let file = dir.join(format!("broker-{active}.toml"));
    std::fs::write(&file, toml).unwrap();
    file
}

fn seal(config: &Path, record: &str, secret: &[u8]) -> String {
    let out = ops(&["seal", "--config", path(config), "--record", record], secret);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn unseal(config: &Path, record: &str, sealed: &str) -> Output {
    ops(&["unseal", "--config", path(config), "--record", record], sealed.as_bytes())
}

/// The error of a run that must fail with exit 1; it never shows the secret.
fn failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(out.stdout.is_empty(), "a failure prints no result: {}", text(&out.stdout));
    let error = text(&out.stderr);
    assert!(!error.contains("pa:ss"), "{error}");
    error
}

#[test]
fn a_generated_key_seals_and_unseals_and_a_second_one_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = generate(dir.path(), "k1");
    let one = config(dir.path(), "k1", &[("k1", &k1)]);
    let sealed = seal(&one, RECORD, SECRET);
    assert!(sealed.starts_with("etcd-broker-sealed:v1:k1:") && sealed.ends_with('\n'), "{sealed}");
    let out = unseal(&one, RECORD, &sealed);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, SECRET);

    let k2 = generate(dir.path(), "k2");
    let rotated = config(dir.path(), "k2", &[("k1", &k1), ("k2", &k2)]);
    assert_eq!(unseal(&rotated, RECORD, &sealed).stdout, SECRET, "the old key still unseals");
    assert!(seal(&rotated, RECORD, SECRET).starts_with("etcd-broker-sealed:v1:k2:"));
    let list = ops(&["keys", "list", "--offline", "--config", path(&rotated)], b"");
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert_eq!(text(&list.stdout), "sealing: on\nkeys:\n  k1\n  k2 (active)\n");
}

#[test]
fn a_key_file_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = generate(dir.path(), "k1");
    let before = std::fs::read(&k1).unwrap();
    let again = ops(&["keys", "generate", "k1", "--out", path(&k1)], b"");
    assert_eq!(
        failure(&again),
        format!("etcd-broker-ops: {} exists; refusing to replace it\n", k1.display())
    );
    assert_eq!(std::fs::read(&k1).unwrap(), before);
    let bad_name = ops(&["keys", "generate", "K1", "--dir", path(dir.path())], b"");
    assert!(failure(&bad_name).contains("key name 'K1' must be 1 to 32 characters"));
}

#[test]
fn a_changed_value_or_another_record_does_not_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = generate(dir.path(), "k1");
    let config = config(dir.path(), "k1", &[("k1", &k1)]);
    let sealed = seal(&config, RECORD, SECRET);

    // One base64 character of the ciphertext changed: a different byte, same length.
    let mut tampered = sealed.trim_end().to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let error = failure(&unseal(&config, RECORD, &tampered));
    assert!(error.contains(&format!("record '{RECORD}' does not unseal with key 'k1'")), "{error}");

    let truncated = &sealed[..sealed.len() / 2];
    let error = failure(&unseal(&config, RECORD, truncated));
    assert!(error.contains(&format!("record '{RECORD}' holds a malformed sealed value")), "{error}");

    let other = "/etcd-broker/bindings/i1/b2";
    let error = failure(&unseal(&config, other, &sealed));
    assert!(error.contains(&format!("record '{other}' does not unseal with key 'k1'")), "{error}");
}

#[test]
fn a_key_file_open_to_others_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = generate(dir.path(), "k1");
    std::fs::set_permissions(&k1, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = config(dir.path(), "k1", &[("k1", &k1)]);
    let key = std::fs::read_to_string(&k1).unwrap();
    for out in [
        ops(&["seal", "--config", path(&config), "--record", RECORD], SECRET),
        ops(&["keys", "list", "--config", path(&config)], b""),
    ] {
        let error = failure(&out);
        assert!(
            error.contains(&format!(
                "secrets.keys.k1.file: key file {} is open to group or others (mode 644)",
                k1.display()
            )),
            "{error}"
        );
        assert!(!error.contains(key.trim_end()), "{error}");
    }
}

#[test]
fn usage_errors_exit_2_and_a_config_without_keys_exits_1() {
    assert_eq!(ops(&["seal", "--record", RECORD], SECRET).status.code(), Some(2));
    assert_eq!(ops(&["unseal", "--config", "x.toml", "--record", ""], b"").status.code(), Some(2));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/etcd-broker.example.toml");
    let error = failure(&ops(&["seal", "--config", path(&example), "--record", RECORD], SECRET));
    assert!(error.contains("configures no keys ([secrets.keys]"), "{error}");
    let list = ops(&["keys", "list", "--offline", "--config", path(&example)], b"");
    assert_eq!(text(&list.stdout), "sealing: off\nkeys: none ([secrets.keys] is empty)\n");
}

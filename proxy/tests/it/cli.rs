//! The binary's command line: `--help` is the reference, bad input is a clear error with exit
//! code 2, an etcd that is not there exit code 1; never a panic.

use std::process::Command;

use crate::common::free_port;

fn proxy(args: &[&str], password: Option<&str>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_etcd-broker-proxy"));
    command.args(args).env_remove("ETCD_BROKER_PROXY_PASSWORD");
    if let Some(password) = password {
        command.env("ETCD_BROKER_PROXY_PASSWORD", password);
    }
    command.output().unwrap()
}

#[test]
fn help_lists_every_flag() {
    let out = proxy(&["--help"], None);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--advertise-client-urls",
        "--endpoints",
        "--endpoints-ca-file",
        "--endpoints-cert-file",
        "--endpoints-key-file",
        "--tls-cert-file",
        "--tls-key-file",
        "--user",
        "--password-file",
        "--admin-users",
        "--state-prefix",
        "--lease-sweep-seconds",
        "--broker-state-prefix",
        "--data-prefix",
        "--config",
        "--bosh-properties",
        "--log-level",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn bad_input_is_a_usage_error_that_names_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--user", "p"], "--endpoints: at least one etcd client URL is needed"),
        (&["--endpoints", "http://127.0.0.1:1"], "--user: the proxy's own etcd user is needed"),
        (&["--endpoints", "http://127.0.0.1:1", "--user", "root"], "--user: must not be root"),
        (
            &["--endpoints", "http://127.0.0.1:1", "--user", "p", "--broker-config", "/etc/broker.toml"],
            "--broker-config: is no longer read",
        ),
        (&["--config", "/nonexistent/proxy.toml"], "--config: cannot read /nonexistent/proxy.toml"),
        (&["--endpoints", "http://127.0.0.1:1", "--user", "p", "--listen", "nope"], "--listen"),
        (
            &["--endpoints", "etcd:2379", "--user", "p"],
            "--endpoints: 'etcd:2379' must be an http:// or https:// URL",
        ),
        (&["--endpoints", "http://127.0.0.1:1", "--user", "p", "--state-prefix", "x"], "--state-prefix"),
        (
            &["--endpoints", "http://127.0.0.1:1", "--user", "p", "--tls-cert-file", "/nonexistent"],
            "--tls-key-file",
        ),
        (
            &["--endpoints", "http://127.0.0.1:1", "--user", "p", "--lease-sweep-seconds", "0"],
            "--lease-sweep-seconds",
        ),
    ];
    for (args, expected) in cases {
        let out = proxy(args, Some("secret-password"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("secret-password"), "{stderr}");
    }
    let out = proxy(&["--endpoints", "http://127.0.0.1:1", "--user", "p"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a password"));
}

#[test]
fn an_etcd_that_is_not_there_fails_the_start_clearly() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let out =
        proxy(&["--endpoints", &endpoint, "--user", "proxy", "--listen", &listen], Some("secret-password"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the proxy's etcd user 'proxy' cannot log in"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("secret-password"), "{stderr}");
}

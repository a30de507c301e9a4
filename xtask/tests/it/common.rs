//! What several tests read of the processes a tool leaves: whether one runs, its children.

use std::time::{Duration, Instant};

/// Whether `pid` runs (a zombie does not: its parent may be a pid 1 that never reaps).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Whether `pid` is gone within 10 s (a process being stopped still has to exit).
pub fn ends(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The running children of `parent`, found through each process's parent in /proc.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let fields: Vec<&str> =
                    stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
                fields.first() != Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str())
            })
        })
        .collect()
}

/// A process's command line, its arguments split.
pub fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The first running child of `parent` whose command line has `flag VALUE` (and, given
/// `subcommand`, that as its first argument): its pid and VALUE.
pub fn child_with(parent: u32, subcommand: Option<&str>, flag: &str) -> Option<(u32, std::path::PathBuf)> {
    children(parent).into_iter().find_map(|pid| {
        let args = cmdline(pid);
        if subcommand.is_some_and(|s| args.get(1).map(String::as_str) != Some(s)) {
            return None;
        }
        let value = args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1))?;
        Some((pid, std::path::PathBuf::from(value)))
    })
}

/// The exit status of `child` once it exits; fails the test after `limit`.
pub fn exit_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{} did not exit within {limit:?}", child.id());
        std::thread::sleep(Duration::from_millis(20));
    }
}

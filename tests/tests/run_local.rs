//! `make run` (`scripts/run-local.sh`) as a person uses it: the whole stack comes up on its own
//! ports and data directory, and Ctrl-C stops it in order: every service drains while NATS and
//! Redis are still there, then the front door and the servers stop, and nothing is left running.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rc_tests::{free_port, service_binary};

const SERVICES: [&str; 7] = [
    "rc-ingress",
    "rc-profiles",
    "rc-accounts",
    "rc-automations",
    "rc-forwarder",
    "rc-delivery",
    "rc-console",
];

/// The first of seven consecutive free loopback ports (the script numbers services from it).
fn free_port_run(len: u16) -> u16 {
    loop {
        let base = free_port();
        if base.checked_add(len).is_none() {
            continue;
        }
        if (base..base + len).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// The direct children of `pid`, with their command names.
fn children(pid: u32) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            out.insert(child, comm.trim().to_string());
        }
    }
    out
}

/// Still running: present and not a zombie waiting to be reaped.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status();
}

#[test]
fn make_run_comes_up_and_ctrl_c_stops_services_before_servers() {
    // Fresh binaries, or the test would judge old code.
    let bin_dir: PathBuf = service_binary("rc-ingress")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for name in SERVICES {
        service_binary(name);
    }
    let data = tempfile::tempdir().expect("tempdir");
    let port_base = free_port_run(SERVICES.len() as u16);
    let front_door = free_port();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // Its own process group, as a terminal runs a foreground job: Ctrl-C is SIGINT to the group.
    let mut script = Command::new("bash")
        .arg(root.join("scripts/run-local.sh"))
        .env("SKIP_BUILD", "1")
        .env("BIN_DIR", &bin_dir)
        .env("DATA_DIR", data.path())
        .env("PORT_BASE", port_base.to_string())
        .env("FRONT_DOOR_PORT", front_door.to_string())
        .env("NATS_PORT", free_port().to_string())
        .env("REDIS_PORT", free_port().to_string())
        .env("RC_LOG__FORMAT", "json")
        .env_remove("NATS_URL")
        .env_remove("REDIS_URL")
        .env_remove("CLUSTER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("run-local.sh");
    let pgid = script.id();

    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = script.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("run-local: {line}");
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut printed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("Press Ctrl-C") => break,
            Ok(line) => printed.push(line),
            Err(_) => {
                signal_group(pgid, "-KILL");
                panic!("the stack did not come up in 120 s: {printed:#?}");
            }
        }
    }
    let not_ready: Vec<_> = printed.iter().filter(|l| l.starts_with("!!")).collect();
    assert!(not_ready.is_empty(), "{not_ready:#?}");
    for name in SERVICES {
        assert!(
            printed.iter().any(|l| l.contains(&format!("{name} ready"))),
            "{name} not reported ready: {printed:#?}"
        );
    }

    // The stack works through its front door with the printed dev key.
    let key = std::fs::read_to_string(data.path().join("dev_api_key")).expect("dev key");
    let status = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{front_door}/inbound/rudderstack"))
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["-H", "Content-Type: application/json"])
        .args([
            "-d",
            r#"{"type":"identify","userId":"u_run","traits":{"name":"Ada"},"messageId":"run-1"}"#,
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "202");

    let procs = children(script.id());
    let pids_of = |names: &[&str]| -> Vec<u32> {
        procs
            .iter()
            .filter(|(_, comm)| names.iter().any(|n| comm.starts_with(n)))
            .map(|(pid, _)| *pid)
            .collect()
    };
    // comm is cut at 15 bytes: "rc-automations" fits, and every service starts with "rc-".
    let services = pids_of(&["rc-"]);
    let servers = pids_of(&["nats-server", "redis-server"]);
    assert_eq!(services.len(), SERVICES.len(), "services: {procs:?}");
    assert_eq!(servers.len(), 2, "servers: {procs:?}");
    let everything: Vec<u32> = procs.keys().copied().collect();

    // Ctrl-C. Then watch, every millisecond, when each process ends.
    let sent = Instant::now();
    signal_group(pgid, "-INT");
    let mut ended: HashMap<u32, Duration> = HashMap::new();
    while ended.len() < everything.len() && sent.elapsed() < Duration::from_secs(60) {
        for pid in &everything {
            if !ended.contains_key(pid) && !running(*pid) {
                ended.insert(*pid, sent.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = loop {
        if let Some(status) = script.try_wait().expect("wait") {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(60) {
            signal_group(pgid, "-KILL");
            panic!("run-local.sh still running 60 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let still: Vec<_> = everything
        .iter()
        .filter(|p| !ended.contains_key(p))
        .map(|p| (p, &procs[p]))
        .collect();
    if !still.is_empty() {
        signal_group(pgid, "-KILL");
        for (pid, _) in &still {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        panic!("still running 60 s after Ctrl-C: {still:?}");
    }

    let last_service = services.iter().map(|p| ended[p]).max().expect("services");
    let first_server = servers.iter().map(|p| ended[p]).min().expect("servers");
    let timeline: Vec<_> = {
        let mut t: Vec<_> = everything.iter().map(|p| (ended[p], &procs[p])).collect();
        t.sort();
        t
    };
    println!("stop order after Ctrl-C: {timeline:?}; script exited with {status}");
    assert!(
        last_service <= first_server,
        "a server stopped before every service had drained: {timeline:?}"
    );
    // Bounded: each service drains within its shutdown bound (default 10 s), all at once.
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "stopping took {:?}",
        sent.elapsed()
    );
}

//! The front door of `make run` in tests: a real nginx on a free port, on the same config
//! (`scripts/front-door.conf.in`), in front of in-process services. nginx comes from `PATH`,
//! `/usr/sbin`, or `$NGINX_BIN` (`make deps` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{Endpoint, Service, free_port, wait_for_port};

/// The upstreams the config names, by placeholder (the API services, then the console).
pub const UPSTREAMS: [&str; 7] = [
    "ingress",
    "profiles",
    "accounts",
    "automations",
    "forwarder",
    "delivery",
    "console",
];

pub struct FrontDoor {
    port: u16,
    child: Option<Child>,
    _dir: TempDir,
}

fn nginx_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NGINX_BIN") {
        return PathBuf::from(p);
    }
    let sbin = Path::new("/usr/sbin/nginx");
    if sbin.exists() {
        return sbin.to_path_buf();
    }
    PathBuf::from("nginx")
}

impl FrontDoor {
    /// Starts nginx routing to the given services (by name: `ingress`, `accounts`, …); a route
    /// of a service not given answers 503 (its upstream is a closed port).
    pub fn start(services: &[(&str, &Service)]) -> FrontDoor {
        let dir = tempfile::tempdir().expect("tempdir");
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/front-door.conf.in");
        let mut conf = std::fs::read_to_string(&template).expect("scripts/front-door.conf.in");
        let port = free_port();
        conf = conf
            .replace("@RUN_DIR@", &dir.path().display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"));
        for name in UPSTREAMS {
            let addr = services
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.addr.to_string())
                .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
            conf = conf.replace(&format!("@{}@", name.to_ascii_uppercase()), &addr);
        }
        assert!(
            !conf.contains('@') || conf.contains("location @"),
            "unfilled placeholder"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx must be installed (make deps), or set NGINX_BIN");
        assert!(
            wait_for_port(port, Duration::from_secs(15)),
            "nginx did not start on port {port}: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        FrontDoor {
            port,
            child: Some(child),
            _dir: dir,
        }
    }

    /// The one base URL.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Endpoint for FrontDoor {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers (a killed master would
        // leave them running).
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

//! Config parity between the code and the Kubernetes manifests under `deploy/`.
//!
//! Fails when a manifest names an `RC_*` variable, a container port or a probe / metrics path
//! that the code does not have. Nothing here is a hand-kept list:
//! - variables come from serializing each service's `Settings::default()` (`RC_<SECTION>__<KEY>`,
//!   the same mapping `rc_common::config::load` uses), and for the `rc-admin` CLI from its clap
//!   `env = "…"` attributes;
//! - the port is the one in the service's default `http.listen`;
//! - probe paths are valid when `rc_common::ops::router` answers them with something else than 404;
//! - every `.route("…")` of a service's sources, and the dead-letter paths of every service in
//!   `DlqService::ALL`, is routed to that service by the Ingress paths under `deploy/base/`,
//!   and every Ingress path routes something.
//!
//! Manifests map to services by directory (`deploy/base/<service>/`; `deploy/base/common/` is
//! shared, so only settings every service has are allowed there) and, elsewhere, by name: a
//! container, a generator or a resource named `<service>`, `<service>-…` or `rc-<service>` belongs
//! to that service; one named `common` / `common-…` is shared. Anything else may only name
//! variables that some service has.
//!
//! **When a service lands**, add its row to [`services`] (and its crate to `tests/Cargo.toml`);
//! the test then also requires its `deploy/base/<service>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rc_common::deadletters::DlqService;
use serde_json::{Value, to_value};
use tower::ServiceExt;
use yaml_rust2::{Yaml, YamlLoader};

/// One row per deployable binary: its name as used in `deploy/` and where its settings come from.
fn services() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::daemon("ingress", to_value(ingress::Settings::default())),
        ServiceSpec::daemon("profiles", to_value(profiles::Settings::default())),
        ServiceSpec::daemon("accounts", to_value(accounts::Settings::default())),
        ServiceSpec::daemon("automations", to_value(automations::Settings::default())),
        ServiceSpec::daemon("forwarder", to_value(forwarder::Settings::default())),
        ServiceSpec::daemon("delivery", to_value(delivery::Settings::default())),
        ServiceSpec::daemon("console", to_value(console::Settings::default())),
        ServiceSpec::cli("admin", include_str!("../../services/admin/src/main.rs")),
    ]
}

/// The paths every service's ops router is asked about, on top of those the manifests use.
const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

#[derive(Debug, Clone)]
struct ServiceSpec {
    name: String,
    vars: BTreeSet<String>,
    /// The HTTP port (API + ops); `None` for a CLI.
    port: Option<u16>,
}

impl ServiceSpec {
    fn port_text(&self) -> String {
        self.port
            .map_or_else(|| "none (a CLI)".into(), |p| p.to_string())
    }

    /// A long-running service: `RC_<SECTION>__<KEY>` for every key of its settings, plus
    /// `RC_CONFIG_FILE`; its port from `http.listen`.
    fn daemon(name: &str, json: serde_json::Result<Value>) -> Self {
        let json = json.expect("settings serialize to JSON");
        let mut vars = BTreeSet::from([rc_common::config::CONFIG_FILE_VAR.to_owned()]);
        for (section, keys) in json.as_object().expect("settings are a struct") {
            let keys = keys
                .as_object()
                .unwrap_or_else(|| panic!("{name}: settings section `{section}` is not a struct"));
            for key in keys.keys() {
                vars.insert(env_var(section, key));
            }
        }
        let listen: SocketAddr = json["http"]["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: settings have no http.listen address"));
        Self {
            name: name.to_owned(),
            vars,
            port: Some(listen.port()),
        }
    }

    /// A CLI: the variables its clap arguments read (`env = "RC_…"` in its source).
    fn cli(name: &str, source: &str) -> Self {
        let vars = source
            .split("env = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|var| var.starts_with("RC_"))
            .map(str::to_owned)
            .collect();
        Self {
            name: name.to_owned(),
            vars,
            port: None,
        }
    }
}

/// `("nats", "stream_replicas")` → `RC_NATS__STREAM_REPLICAS` (what `rc_common::config` reads).
fn env_var(section: &str, key: &str) -> String {
    format!(
        "{}_{}__{}",
        rc_common::config::ENV_PREFIX,
        section.to_uppercase(),
        key.to_uppercase()
    )
}

/// What the manifests are checked against.
struct Catalog {
    services: BTreeMap<String, ServiceSpec>,
    /// Variables every long-running service has (allowed in shared config).
    shared_vars: BTreeSet<String>,
    /// Variables some binary has (allowed where no service can be told).
    any_vars: BTreeSet<String>,
    /// Paths the ops router serves.
    ops_paths: BTreeSet<String>,
}

impl Catalog {
    fn new(specs: Vec<ServiceSpec>, ops_paths: BTreeSet<String>) -> Self {
        let daemons: Vec<&ServiceSpec> = specs.iter().filter(|s| s.port.is_some()).collect();
        // Settings every service has, less each service's own section (`RC_INGRESS__…`),
        // which only that service reads even while it is the only one.
        let own_sections: Vec<String> = specs
            .iter()
            .map(|s| {
                format!(
                    "{}_{}__",
                    rc_common::config::ENV_PREFIX,
                    s.name.to_uppercase()
                )
            })
            .collect();
        let shared_vars = daemons
            .iter()
            .map(|s| s.vars.clone())
            .reduce(|a, b| a.intersection(&b).cloned().collect())
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !own_sections.iter().any(|own| v.starts_with(own)))
            .collect();
        let any_vars = specs.iter().flat_map(|s| s.vars.iter().cloned()).collect();
        Self {
            services: specs.into_iter().map(|s| (s.name.clone(), s)).collect(),
            shared_vars,
            any_vars,
            ops_paths,
        }
    }

    /// `ingress`, `ingress-config`, `rc-ingress` → ingress; `common`, `common-config` → shared.
    fn scope_of_name(&self, name: &str) -> Option<Scope<'_>> {
        let name = name.strip_prefix("rc-").unwrap_or(name);
        let owner = |prefix: &str| name == prefix || name.starts_with(&format!("{prefix}-"));
        if owner("common") {
            return Some(Scope::Shared);
        }
        self.services
            .values()
            .find(|s| owner(&s.name))
            .map(Scope::Service)
    }
}

#[derive(Clone, Copy)]
enum Scope<'a> {
    Service(&'a ServiceSpec),
    Shared,
    Any,
}

impl Scope<'_> {
    fn describe(&self) -> String {
        match self {
            Scope::Service(s) => format!("service `{}`", s.name),
            Scope::Shared => "every service (shared config)".into(),
            Scope::Any => "any service".into(),
        }
    }
}

/// Checks one manifest file (possibly several YAML documents). `rel` is its path under
/// `deploy/`, which decides the default scope. Returns one line per problem.
fn check_manifest(catalog: &Catalog, rel: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut parts = rel.split('/');
    let base_scope = match (parts.next(), parts.next(), parts.next()) {
        (Some("base"), Some(dir), Some(_)) => match catalog.scope_of_name(dir) {
            Some(scope) if dir == "common" || catalog.services.contains_key(dir) => Some(scope),
            _ => {
                problems.push(format!(
                    "{rel}: deploy/base/{dir}/ has no row in the services table of \
                     tests/tests/deploy_parity.rs (add the service there first)"
                ));
                None
            }
        },
        _ => None,
    };
    let docs = match YamlLoader::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("{rel}: not valid YAML: {e}")],
    };
    for (i, doc) in docs.iter().enumerate() {
        let doc = match yaml_to_json(doc) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{rel} (document {i}): {e}"));
                continue;
            }
        };
        let mut checker = Checker {
            catalog,
            file: rel,
            problems: &mut problems,
        };
        checker.document(&doc, base_scope, &format!("[{i}]"));
    }
    problems
}

struct Checker<'a, 'p> {
    catalog: &'a Catalog,
    file: &'a str,
    problems: &'p mut Vec<String>,
}

impl<'a> Checker<'a, '_> {
    fn problem(&mut self, at: &str, message: String) {
        self.problems.push(format!("{} {at}: {message}", self.file));
    }

    /// A whole document (or an inline patch): scoped by directory, else by its name.
    fn document(&mut self, doc: &Value, dir_scope: Option<Scope<'a>>, at: &str) {
        let by_name = doc["metadata"]["name"]
            .as_str()
            .and_then(|n| self.catalog.scope_of_name(n));
        let scope = dir_scope.or(by_name).unwrap_or(Scope::Any);
        if doc["kind"] == "Service"
            && let Scope::Service(spec) = scope
        {
            self.service_object(doc, spec, at);
        }
        self.walk(doc, scope, at);
    }

    fn walk(&mut self, value: &Value, scope: Scope<'a>, at: &str) {
        match value {
            Value::String(s) => self.tokens(s, scope, at),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk(item, scope, &format!("{at}[{i}]"));
                }
            }
            Value::Object(map) => {
                for (key, child) in map {
                    let here = format!("{at}.{key}");
                    self.tokens(key, scope, &here);
                    match (key.as_str(), child) {
                        (
                            "containers" | "initContainers" | "configMapGenerator"
                            | "secretGenerator",
                            Value::Array(items),
                        ) => {
                            for (i, item) in items.iter().enumerate() {
                                let item_at = format!("{here}[{i}]");
                                let named = item["name"]
                                    .as_str()
                                    .and_then(|n| self.catalog.scope_of_name(n));
                                let item_scope = named.unwrap_or(scope);
                                if key.ends_with("ontainers") {
                                    self.container(item, item_scope, &item_at);
                                }
                                self.walk(item, item_scope, &item_at);
                            }
                        }
                        // An inline kustomize patch: parse it and check it like a file.
                        ("patch", Value::String(text)) => {
                            let target = map
                                .get("target")
                                .and_then(|t| t["name"].as_str())
                                .and_then(|n| self.catalog.scope_of_name(n));
                            self.inline_patch(text, target.or(Some(scope)), &here);
                        }
                        _ => self.walk(child, scope, &here),
                    }
                }
                self.assignments(map, scope, at);
                self.annotations_and_backends(map, at);
            }
            _ => {}
        }
    }

    fn inline_patch(&mut self, text: &str, scope: Option<Scope<'a>>, at: &str) {
        let docs = match YamlLoader::load_from_str(text) {
            Ok(docs) => docs,
            Err(e) => return self.problem(at, format!("inline patch is not valid YAML: {e}")),
        };
        for (i, doc) in docs.iter().enumerate() {
            match yaml_to_json(doc) {
                // A JSON 6902 patch is a list; a strategic merge patch is a document.
                Ok(doc) => self.document(&doc, scope, &format!("{at}<{i}>")),
                Err(e) => self.problem(at, e),
            }
        }
    }

    /// Every `RC_…` word in a key or string value must be a variable of the scope.
    fn tokens(&mut self, text: &str, scope: Scope<'a>, at: &str) {
        for var in rc_words(text) {
            let (known, allowed) = match scope {
                Scope::Service(spec) => (spec.vars.contains(&var), &spec.vars),
                Scope::Shared => (
                    self.catalog.shared_vars.contains(&var),
                    &self.catalog.shared_vars,
                ),
                Scope::Any => (self.catalog.any_vars.contains(&var), &self.catalog.any_vars),
            };
            if !known {
                let section: String = var.split("__").next().unwrap_or("").to_owned();
                let near: Vec<&String> =
                    allowed.iter().filter(|v| v.starts_with(&section)).collect();
                self.problem(
                    at,
                    format!(
                        "`{var}` is not a setting of {} (same section: {near:?})",
                        scope.describe()
                    ),
                );
            }
        }
    }

    /// `RC_HTTP__LISTEN` given a value (env item, ConfigMap data, generator literal) must use
    /// the service's port, and never sits in shared config (each service has its own port).
    fn assignments(&mut self, map: &serde_json::Map<String, Value>, scope: Scope<'a>, at: &str) {
        const LISTEN: &str = "RC_HTTP__LISTEN";
        let mut values: Vec<String> = Vec::new();
        if map.get("name").and_then(Value::as_str) == Some(LISTEN)
            && let Some(v) = map.get("value").and_then(Value::as_str)
        {
            values.push(v.to_owned());
        }
        if let Some(v) = map.get(LISTEN).and_then(Value::as_str) {
            values.push(v.to_owned());
        }
        if let Some(Value::Array(literals)) = map.get("literals") {
            for literal in literals.iter().filter_map(Value::as_str) {
                if let Some(v) = literal
                    .strip_prefix(LISTEN)
                    .and_then(|r| r.strip_prefix('='))
                {
                    values.push(v.to_owned());
                }
            }
        }
        for value in values {
            match scope {
                Scope::Shared => self.problem(
                    at,
                    format!("{LISTEN} is in shared config, but every service has its own port"),
                ),
                Scope::Service(spec) => {
                    let port = value.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    if port != spec.port {
                        self.problem(
                            at,
                            format!(
                                "{LISTEN}={value} but `{}` serves on port {}",
                                spec.name,
                                spec.port_text()
                            ),
                        );
                    }
                }
                Scope::Any => {}
            }
        }
    }

    /// A container of a known service: its ports and probes.
    fn container(&mut self, container: &Value, scope: Scope<'a>, at: &str) {
        let Scope::Service(spec) = scope else {
            return;
        };
        let mut named_ports = BTreeMap::new();
        if let Some(ports) = container["ports"].as_array() {
            for (i, port) in ports.iter().enumerate() {
                let number = port["containerPort"].as_u64();
                match spec.port {
                    None => self.problem(
                        &format!("{at}.ports[{i}]"),
                        format!("`{}` is a CLI and listens on no port", spec.name),
                    ),
                    Some(p) if number != Some(u64::from(p)) => self.problem(
                        &format!("{at}.ports[{i}].containerPort"),
                        format!(
                            "{}, but `{}` serves on port {p}",
                            port["containerPort"], spec.name
                        ),
                    ),
                    _ => {}
                }
                if let (Some(name), Some(number)) = (port["name"].as_str(), number) {
                    named_ports.insert(name.to_owned(), number);
                }
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let get = &container[probe]["httpGet"];
            if get.is_null() {
                continue;
            }
            let here = format!("{at}.{probe}.httpGet");
            let path = get["path"].as_str().unwrap_or("/");
            if !self.catalog.ops_paths.contains(path) {
                self.problem(
                    &format!("{here}.path"),
                    format!(
                        "{path} is not served by the ops router (it serves {:?})",
                        self.catalog.ops_paths
                    ),
                );
            }
            let port = match &get["port"] {
                Value::String(name) => named_ports.get(name).copied(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            };
            // A probe may name a port declared in a patch of the same container elsewhere;
            // only a port that resolves here can be compared.
            let unresolved_name = get["port"].is_string() && port.is_none();
            if !unresolved_name && port != spec.port.map(u64::from) {
                self.problem(
                    &format!("{here}.port"),
                    format!(
                        "{} does not resolve to port {} of `{}`",
                        get["port"],
                        spec.port_text(),
                        spec.name
                    ),
                );
            }
        }
    }

    /// A `kind: Service` of a known service must forward to its port.
    fn service_object(&mut self, doc: &Value, spec: &ServiceSpec, at: &str) {
        for (i, port) in doc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let target = &port["targetPort"];
            let ok = match target {
                Value::String(name) => name == "http",
                Value::Number(n) => n.as_u64() == spec.port.map(u64::from),
                // Without targetPort, the Service port is the target.
                Value::Null => port["port"].as_u64() == spec.port.map(u64::from),
                _ => false,
            };
            if !ok {
                self.problem(
                    &format!("{at}.spec.ports[{i}]"),
                    format!(
                        "targetPort {target} does not reach `{}` (port `http` = {})",
                        spec.name,
                        spec.port_text()
                    ),
                );
            }
        }
    }

    /// Prometheus annotations, ServiceMonitor endpoints and Ingress backends.
    fn annotations_and_backends(&mut self, map: &serde_json::Map<String, Value>, at: &str) {
        let ports: BTreeSet<u16> = self
            .catalog
            .services
            .values()
            .filter_map(|s| s.port)
            .collect();
        if let Some(path) = map.get("prometheus.io/path").and_then(Value::as_str)
            && !self.catalog.ops_paths.contains(path)
        {
            self.problem(at, format!("prometheus.io/path {path} is not served"));
        }
        if let Some(port) = map.get("prometheus.io/port").and_then(Value::as_str)
            && !port.parse().is_ok_and(|p: u16| ports.contains(&p))
        {
            self.problem(
                at,
                format!("prometheus.io/port {port} is no service's port"),
            );
        }
        // ServiceMonitor / PodMonitor endpoint: {port, path}.
        if map.contains_key("port")
            && let Some(path) = map.get("path").and_then(Value::as_str)
            && (at.contains(".endpoints[") || at.contains(".podMetricsEndpoints["))
            && !self.catalog.ops_paths.contains(path)
        {
            self.problem(at, format!("scrape path {path} is not served"));
        }
        // Ingress backend: service: {name, port: {name | number}}.
        if let Some(Value::Object(backend)) = map.get("service")
            && let Some(Scope::Service(spec)) = backend
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| self.catalog.scope_of_name(n))
        {
            let port = &backend.get("port").cloned().unwrap_or_default();
            let ok = port["name"] == "http" || port["number"].as_u64() == spec.port.map(u64::from);
            if !ok {
                self.problem(
                    &format!("{at}.service.port"),
                    format!("{port} is not the `http` port of `{}`", spec.name),
                );
            }
        }
    }
}

/// The `RC_…` words in a string (upper-case letters, digits, underscores).
fn rc_words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with("RC_"))
        .map(str::to_owned)
        .collect()
}

fn yaml_to_json(yaml: &Yaml) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => {
            Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported in manifests".into()),
        Yaml::BadValue => return Err("invalid YAML value".into()),
    })
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            manifest_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// The paths the shared ops router serves, asked in-process: everything in `candidates`
/// that does not answer 404.
async fn served_ops_paths(candidates: BTreeSet<String>) -> BTreeSet<String> {
    let router = rc_common::ops::router(rc_common::ops::Readiness::new(rc_common::Shutdown::new()));
    let mut served = BTreeSet::new();
    for path in candidates {
        let request = Request::get(path.as_str()).body(Body::empty()).unwrap();
        let response = router
            .clone()
            .oneshot(request)
            .await
            .expect("router answers");
        if response.status() != StatusCode::NOT_FOUND {
            served.insert(path);
        }
    }
    served
}

/// Every path-like value the manifests hand to a probe or a scraper, so the router is asked
/// about exactly those.
fn paths_named_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("- ");
            let value = line
                .strip_prefix("path:")
                .or_else(|| line.strip_prefix("prometheus.io/path:"))?;
            let value = value.trim().trim_matches(['"', '\'']);
            Some(value.split('?').next().unwrap_or(value).to_owned())
        })
        .filter(|p| p.starts_with('/'))
        .collect()
}

async fn catalog_for(texts: &[&str]) -> Catalog {
    let mut candidates: BTreeSet<String> = OPS_PATHS.iter().map(|p| (*p).to_owned()).collect();
    for text in texts {
        candidates.extend(paths_named_in(text));
    }
    Catalog::new(services(), served_ops_paths(candidates).await)
}

#[tokio::test]
async fn manifests_name_only_settings_ports_and_paths_the_code_has() {
    let root = deploy_dir();
    let mut files = Vec::new();
    manifest_files(&root, &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("base/ingress/deployment.yaml")),
        "deploy/base/ingress/deployment.yaml is missing (found {files:?})"
    );
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let rel = f
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(f).unwrap())
        })
        .collect();
    let catalog = catalog_for(&texts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>()).await;
    for path in OPS_PATHS {
        assert!(
            catalog.ops_paths.contains(path),
            "the ops router no longer serves {path}"
        );
    }
    let problems: Vec<String> = texts
        .iter()
        .flat_map(|(rel, text)| check_manifest(&catalog, rel, text))
        .collect();
    assert!(
        problems.is_empty(),
        "deploy/ disagrees with the code:\n  {}",
        problems.join("\n  ")
    );
    // Every long-running service of the table is deployed (a base of its own).
    for spec in catalog.services.values().filter(|s| s.port.is_some()) {
        let deployment = format!("base/{}/deployment.yaml", spec.name);
        assert!(
            texts.iter().any(|(rel, _)| *rel == deployment),
            "deploy/{deployment} is missing: `{}` has a row in services() but no base",
            spec.name
        );
    }
    // The check must have seen the ingress container and its settings.
    let ingress = &catalog.services["ingress"];
    assert!(ingress.vars.contains("RC_NATS__STREAM_REPLICAS"));
    assert!(ingress.vars.contains("RC_INGRESS__MAX_INFLIGHT_PUBLISHES"));
    assert_eq!(ingress.port, Some(8080));
    assert!(catalog.services["admin"].vars.contains("RC_REDIS__URL"));
}

// ---- public routes: the Ingress objects against the routers --------------------------------------

/// One path of an Ingress: `(path, pathType, service it routes to)`.
type IngressPath = (String, String, String);

/// The paths registered with `.route("<path>", …)` in a service's sources, outside `#[cfg(test)]`
/// modules (tests there may build routers of their own, e.g. fake third-party servers).
fn routes_in(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    code.split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.split('"').next().map(str::to_owned)
        })
        .collect()
}

fn service_routes(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let sources: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let mut routes: Vec<String> = sources.iter().flat_map(|s| routes_in(s)).collect();
    // The shared dead-letter router builds its paths at run time: every service of the declared
    // list `DlqService::ALL` serves it at its `routed_path()` (the dead_letters test asks each
    // running service there).
    let service = src.parent().unwrap().file_name().unwrap().to_str().unwrap();
    if let Ok(dlq) = service.parse::<DlqService>() {
        routes.push(dlq.routed_path());
        routes.push(format!("{}/{{seq}}", dlq.routed_path()));
    }
    routes
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The paths of the Ingress objects in one manifest file.
fn ingress_paths(text: &str) -> Vec<IngressPath> {
    let mut out = Vec::new();
    for doc in YamlLoader::load_from_str(text).expect("valid YAML") {
        let doc = yaml_to_json(&doc).expect("plain YAML");
        if doc["kind"] != "Ingress" {
            continue;
        }
        for rule in doc["spec"]["rules"].as_array().into_iter().flatten() {
            for p in rule["http"]["paths"].as_array().into_iter().flatten() {
                out.push((
                    p["path"].as_str().unwrap_or("/").to_owned(),
                    p["pathType"].as_str().unwrap_or("Prefix").to_owned(),
                    p["backend"]["service"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                ));
            }
        }
    }
    out
}

/// Whether an Ingress path takes a request for `route` (Kubernetes `Exact` / element-wise
/// `Prefix`; `ImplementationSpecific` is treated as `Prefix`).
fn ingress_takes(path: &str, kind: &str, route: &str) -> bool {
    if kind == "Exact" {
        return route == path;
    }
    let path = path.trim_end_matches('/');
    route == path
        || path.is_empty()
        || route
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every route of every service is taken, by longest match as the controllers do, by an
/// Ingress path that routes to that service; every Ingress path takes some route of its service.
fn route_problems(paths: &[IngressPath], routes: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (service, service_routes) in routes {
        for route in service_routes {
            let best = paths
                .iter()
                .filter(|(p, kind, _)| ingress_takes(p, kind, route))
                .max_by_key(|(p, kind, _)| (p.len(), kind == "Exact"));
            match best {
                Some((_, _, owner)) if owner == service => {}
                Some((p, _, owner)) => problems.push(format!(
                    "{service}'s route {route} is routed to `{owner}` (Ingress path {p})"
                )),
                None => problems.push(format!(
                    "{service}'s route {route} is not routed by any Ingress"
                )),
            }
        }
    }
    for (p, kind, owner) in paths {
        let theirs = routes.get(owner).map(Vec::as_slice).unwrap_or_default();
        if !theirs.iter().any(|r| ingress_takes(p, kind, r)) {
            problems.push(format!(
                "Ingress path {p} ({kind}) routes to `{owner}`, which has no route under it"
            ));
        }
    }
    problems
}

#[test]
fn ingress_routes_every_public_path_to_its_service() {
    let deploy = deploy_dir();
    let services_dir = deploy.parent().unwrap().join("services");
    let mut paths = Vec::new();
    let mut routes = BTreeMap::new();
    for spec in services().into_iter().filter(|s| s.port.is_some()) {
        let file = deploy.join("base").join(&spec.name).join("ingress.yaml");
        // A service without a public API has no ingress.yaml (and then no routes).
        if let Ok(text) = std::fs::read_to_string(&file) {
            for path in ingress_paths(&text) {
                assert_eq!(
                    path.2,
                    spec.name,
                    "{}: an Ingress of base/{}/ routes to another service",
                    file.display(),
                    spec.name
                );
                paths.push(path);
            }
        }
        let found = service_routes(&services_dir.join(&spec.name).join("src"));
        assert!(
            !found.is_empty() || !file.exists(),
            "no .route(…) found in services/{}/src",
            spec.name
        );
        routes.insert(spec.name, found);
    }
    assert!(routes["accounts"].contains(&"/users/{user_id}/tenants".to_owned()));
    let problems = route_problems(&paths, &routes);
    assert!(
        problems.is_empty(),
        "deploy/base/*/ingress.yaml disagree with the routers:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn route_check_rejects_unrouted_misrouted_and_dead_paths() {
    let source = r#"
        Router::new()
            .route("/tenants", get(list))
            .route(
                "/users/{user_id}/tenants",
                get(user_tenants),
            );
        #[cfg(test)]
        mod tests { fn fake() { Router::new().route("/v1/batch", post(ok)); } }
    "#;
    assert_eq!(routes_in(source), ["/tenants", "/users/{user_id}/tenants"]);
    let routes = BTreeMap::from([
        ("accounts".to_owned(), routes_in(source)),
        (
            "profiles".to_owned(),
            vec!["/profiles/{user_id}".to_owned()],
        ),
    ]);
    let path = |p: &str, kind: &str, owner: &str| (p.to_owned(), kind.to_owned(), owner.to_owned());
    let good = [
        path("/tenants", "Prefix", "accounts"),
        path("/users", "Prefix", "accounts"),
        path("/profiles", "Prefix", "profiles"),
    ];
    assert_eq!(route_problems(&good, &routes), Vec::<String>::new());
    let bad = [
        path("/tenant", "Prefix", "accounts"), // takes nothing: element-wise prefix
        path("/users", "Prefix", "profiles"),  // accounts' route, misrouted
        path("/profiles", "Exact", "profiles"), // does not take /profiles/{user_id}
    ];
    let problems = route_problems(&bad, &routes);
    let joined = problems.join("\n");
    assert!(joined.contains("/tenants is not routed"), "{joined}");
    assert!(
        joined.contains("/users/{user_id}/tenants is routed to `profiles`"),
        "{joined}"
    );
    assert!(
        joined.contains("/profiles/{user_id} is not routed"),
        "{joined}"
    );
    assert!(joined.contains("Ingress path /tenant (Prefix)"), "{joined}");
    assert!(
        joined.contains("Ingress path /profiles (Exact)"),
        "{joined}"
    );
    assert_eq!(problems.len(), 6, "{joined}");
}

// ---- the checker itself, on snippets that must fail -------------------------------------------

const GOOD_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ingress
spec:
  template:
    metadata:
      annotations:
        prometheus.io/port: "8080"
        prometheus.io/path: /metrics
    spec:
      containers:
        - name: ingress
          ports:
            - name: http
              containerPort: 8080
          env:
            - name: RC_NATS__STREAM_REPLICAS
              value: "3"
            - name: RC_HTTP__LISTEN
              value: 0.0.0.0:8080
          livenessProbe:
            httpGet: {path: /healthz, port: http}
          readinessProbe:
            httpGet: {path: /readyz, port: 8080}
"#;

async fn check(rel: &str, text: &str) -> Vec<String> {
    let catalog = catalog_for(&[text]).await;
    check_manifest(&catalog, rel, text)
}

#[tokio::test]
async fn checker_accepts_a_correct_deployment() {
    assert_eq!(
        check("base/ingress/deployment.yaml", GOOD_DEPLOYMENT).await,
        Vec::<String>::new()
    );
    // The same document outside base/ is scoped by its container name.
    assert_eq!(
        check("overlays/dev/patch.yaml", GOOD_DEPLOYMENT).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn checker_rejects_an_unknown_variable() {
    let bad = GOOD_DEPLOYMENT.replace("RC_NATS__STREAM_REPLICAS", "RC_NATS__STREAM_REPLICA");
    let problems = check("base/ingress/deployment.yaml", &bad).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("RC_NATS__STREAM_REPLICA`"),
        "{problems:?}"
    );
    // Also in an overlay, where the container name tells the service.
    assert_eq!(check("overlays/production/p.yaml", &bad).await.len(), 1);
}

#[tokio::test]
async fn checker_rejects_a_variable_of_another_binary() {
    // rc-admin reads RC_ADMIN_API_KEY; the ingress does not.
    let bad = GOOD_DEPLOYMENT.replace("RC_NATS__STREAM_REPLICAS", "RC_ADMIN_API_KEY");
    let problems = check("base/ingress/deployment.yaml", &bad).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[tokio::test]
async fn checker_rejects_wrong_ports_and_probe_paths() {
    let bad = GOOD_DEPLOYMENT
        .replace("containerPort: 8080", "containerPort: 9090")
        .replace("path: /healthz", "path: /health")
        .replace("value: 0.0.0.0:8080", "value: 0.0.0.0:8081")
        .replace("prometheus.io/path: /metrics", "prometheus.io/path: /stats");
    let problems = check("base/ingress/deployment.yaml", &bad).await;
    let joined = problems.join("\n");
    for expected in [
        "containerPort",
        "/health is not served",
        "RC_HTTP__LISTEN=0.0.0.0:8081",
        "/stats is not served",
        // The liveness probe names `http`, which now resolves to 9090.
        "livenessProbe.httpGet.port",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
}

#[tokio::test]
async fn checker_scopes_shared_config_generators_and_inline_patches() {
    let kustomization = r#"
configMapGenerator:
  - name: common-config
    literals:
      - RC_NATS__URL=nats://nats:4222
      - RC_INGRESS__MAX_BODY_BYTES=1
      - RC_HTTP__LISTEN=0.0.0.0:8080
  - name: ingress-config
    literals:
      - RC_INGRESS__MAX_BODY_BYTES=1
      - RC_INGRESS__MAX_BODYBYTES=1
patches:
  - target: {kind: Deployment, name: ingress}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: RC_LOG__FORMATT, value: json}
"#;
    let problems = check("overlays/production/kustomization.yaml", kustomization).await;
    let joined = problems.join("\n");
    // Shared config may only hold settings every service has, and no listen address.
    assert!(joined.contains("`RC_INGRESS__MAX_BODY_BYTES` is not a setting of every service"));
    assert!(joined.contains("RC_HTTP__LISTEN is in shared config"));
    assert!(joined.contains("`RC_INGRESS__MAX_BODYBYTES` is not a setting of service `ingress`"));
    assert!(joined.contains("`RC_LOG__FORMATT`"));
    assert_eq!(problems.len(), 4, "{joined}");
}

#[tokio::test]
async fn checker_requires_a_services_table_row_for_each_base() {
    let problems = check("base/mailer/deployment.yaml", "kind: ConfigMap\n").await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("no row in the services table")),
        "{problems:?}"
    );
}

#[test]
fn variable_names_follow_the_config_loader() {
    assert_eq!(
        env_var("nats", "stream_replicas"),
        "RC_NATS__STREAM_REPLICAS"
    );
    let admin = ServiceSpec::cli("admin", include_str!("../../services/admin/src/main.rs"));
    assert!(
        admin.vars.contains("RC_REDIS__CLUSTER_URLS"),
        "{:?}",
        admin.vars
    );
    assert!(admin.vars.iter().all(|v| v.starts_with("RC_")));
    assert_eq!(rc_words("$(RC_A__B) and RC_C, rc_d"), ["RC_A__B", "RC_C"]);
}

// ---- the front door of `make run` against the Ingress objects ----------------------------------

/// The routes of the front door's nginx config as Ingress paths: `location = P` alone is an
/// `Exact` path; `location = P` plus `location ^~ P/` to the same upstream is a `Prefix` path.
/// Any other proxied location is a problem (it would route what the Ingress does not).
fn front_door_paths(conf: &str) -> Result<BTreeSet<IngressPath>, String> {
    let mut exact = BTreeMap::new();
    let mut prefix = BTreeMap::new();
    for line in conf.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("location ") else {
            continue;
        };
        let upstream = rest
            .split("proxy_pass http://")
            .nth(1)
            .and_then(|u| u.split(';').next());
        let mut words = rest.split_whitespace();
        match (words.next(), words.next(), upstream) {
            (Some("="), Some(p), Some(u)) => {
                exact.insert(p.to_owned(), u.to_owned());
            }
            (Some("^~"), Some(p), Some(u)) if p.len() > 1 && p.ends_with('/') => {
                prefix.insert(p.trim_end_matches('/').to_owned(), u.to_owned());
            }
            // The JSON 404 fallback and named error locations proxy nothing.
            (Some("/" | "@too_large" | "@unavailable"), _, None) => {}
            _ => return Err(format!("unexpected location: {line}")),
        }
    }
    let mut out = BTreeSet::new();
    for (p, u) in &prefix {
        if exact.get(p) != Some(u) {
            return Err(format!(
                "`location ^~ {p}/` needs `location = {p}` to the same upstream ({u})"
            ));
        }
        out.insert((p.clone(), "Prefix".to_owned(), u.clone()));
    }
    for (p, u) in exact {
        if !prefix.contains_key(&p) {
            out.insert((p, "Exact".to_owned(), u));
        }
    }
    Ok(out)
}

fn front_door_conf() -> String {
    let path = deploy_dir()
        .parent()
        .unwrap()
        .join("scripts/front-door.conf.in");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn all_ingress_paths() -> BTreeSet<IngressPath> {
    let mut paths = BTreeSet::new();
    for spec in services() {
        let file = deploy_dir()
            .join("base")
            .join(&spec.name)
            .join("ingress.yaml");
        if let Ok(text) = std::fs::read_to_string(&file) {
            paths.extend(ingress_paths(&text));
        }
    }
    paths
}

#[test]
fn front_door_routes_exactly_as_the_ingress_objects() {
    let ingress = all_ingress_paths();
    assert!(ingress.contains(&(
        "/inbound/courier".to_owned(),
        "Exact".to_owned(),
        "ingress".to_owned()
    )));
    let front = front_door_paths(&front_door_conf()).expect("front door config parses");
    let only_front: Vec<_> = front.difference(&ingress).collect();
    let only_ingress: Vec<_> = ingress.difference(&front).collect();
    assert!(
        only_front.is_empty() && only_ingress.is_empty(),
        "scripts/front-door.conf.in and deploy/base/*/ingress.yaml differ:\n  only in the front door: {only_front:?}\n  only in the Ingress objects: {only_ingress:?}"
    );
    // Every upstream the routes name is declared, with a placeholder the scripts fill in.
    let conf = front_door_conf();
    for (_, _, service) in &front {
        let placeholder = format!("@{}@", service.to_ascii_uppercase());
        assert!(
            conf.contains(&format!("upstream {service} {{ server {placeholder};")),
            "no `upstream {service}` with {placeholder}"
        );
    }
}

#[test]
fn front_door_check_catches_drift() {
    let conf = front_door_conf();
    let paths = front_door_paths(&conf).unwrap();
    // A Prefix path without its element-wise half becomes Exact: a different route.
    let dropped = conf.replace("location ^~ /lists/ { proxy_pass http://accounts; }", "");
    let changed = front_door_paths(&dropped).unwrap();
    assert!(changed.contains(&("/lists".into(), "Exact".into(), "accounts".into())));
    assert_ne!(changed, paths);
    // Misrouted halves and unknown location forms are refused outright.
    let misrouted = conf.replace(
        "location ^~ /lists/ { proxy_pass http://accounts; }",
        "location ^~ /lists/ { proxy_pass http://profiles; }",
    );
    assert!(front_door_paths(&misrouted).unwrap_err().contains("/lists"));
    let regex = format!("{conf}\nlocation ~ ^/x {{ proxy_pass http://ingress; }}\n");
    assert!(
        front_door_paths(&regex)
            .unwrap_err()
            .contains("unexpected location")
    );
}

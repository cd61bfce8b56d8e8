//! The services on the engines production runs: a 3-node JetStream cluster (R3 streams) and a
//! Redis Cluster (3 primaries, 3 replicas), all on loopback (`rc_tests::cluster`). The whole
//! path works on them, and node failures under load lose no acknowledged event.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rc_tests::dataplane::DataPlane;
use rc_tests::delivery::put_provider;
use rc_tests::forwarder::{eventually, new_encryption_key, put_integration};
use rc_tests::{Service, Stack, call};
use serde_json::{Value, json};

const WRITE_KEY: &str = "2AbcWriteKeyFromRudderStack9f2a";

/// One cluster test at a time: each runs nine servers and its services, and two at once on a
/// 2-core CI machine starve each other's elections and failovers.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An HTTP client whose requests time out, so a stuck service fails the test instead of
/// hanging it.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// What a load run saw: the user ids whose identify was acknowledged (202), and how the
/// ingress answered while a node was down.
#[derive(Default)]
struct Load {
    acked: BTreeSet<String>,
    retryable: usize,
    /// From the first to the last retryable answer (503/429): how long the ingress refused.
    refusing: Option<(Instant, Instant)>,
}

/// POSTs one event until it is stored, as RudderStack does: a 503/429 is retried after its
/// `Retry-After`, a refused or timed-out request (a replica restarting) on the next URL of
/// `urls`, starting at `first`; anything else but 202 fails the test.
async fn store(
    http: &reqwest::Client,
    urls: &[String],
    first: usize,
    key: &str,
    event: &Value,
    load: &Mutex<Load>,
) {
    for attempt in first.. {
        let sent = http
            .post(&urls[attempt % urls.len()])
            .bearer_auth(key)
            .json(event)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            // A timeout or a refused connection is a retryable answer too.
            Err(_) => {
                note_retryable(load);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match response.status().as_u16() {
            202 => return,
            503 | 429 => {
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                note_retryable(load);
                // Retry sooner than RudderStack would, to see how soon the ingress is back.
                tokio::time::sleep(Duration::from_millis(200).min(Duration::from_secs(wait))).await;
            }
            other => panic!("unexpected {other}: {:?}", response.text().await),
        }
    }
}

fn note_retryable(load: &Mutex<Load>) {
    let mut load = load.lock().unwrap();
    load.retryable += 1;
    let now = Instant::now();
    load.refusing = Some(match load.refusing {
        Some((first, _)) => (first, now),
        None => (now, now),
    });
}

/// Identifies `count` users (`{prefix}-{i}`) at about `per_sec`, each one stored before it is
/// counted as acknowledged.
fn identify_load(
    ingress: Arc<Service>,
    key: String,
    prefix: &'static str,
    count: usize,
    per_sec: u64,
    load: Arc<Mutex<Load>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = http();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..count {
            tick.tick().await;
            let (http, ingress, key, load) =
                (http.clone(), ingress.clone(), key.clone(), load.clone());
            sends.spawn(async move {
                let user = format!("{prefix}-{i}");
                let event = json!({"type": "identify", "userId": user, "messageId": format!("m-{user}"),
                    "traits": {"plan": "team", "n": i}});
                let url = [ingress.url("/inbound/rudderstack")];
                store(&http, &url, 0, &key, &event, &load).await;
                load.lock().unwrap().acked.insert(user);
            });
        }
        while sends.join_next().await.is_some() {}
    })
}

/// Polls `done` for every item until it holds for all of them; fails after `timeout`,
/// naming some of the items left.
async fn until_all<T: std::fmt::Debug>(
    what: &str,
    items: impl IntoIterator<Item = T>,
    timeout: Duration,
    mut done: impl AsyncFnMut(&T) -> bool,
) {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<T> = items.into_iter().collect();
    let total = pending.len();
    loop {
        let mut still = Vec::new();
        for item in pending {
            if !done(&item).await {
                still.push(item);
            }
        }
        pending = still;
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} {what} after {timeout:?}, e.g. {:?}",
            pending.len(),
            &pending[..pending.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every acknowledged user has a profile, read through the profiles API.
async fn assert_all_profiles(profiles: &Service, key: &str, acked: &BTreeSet<String>) {
    let http = http();
    until_all(
        "acknowledged identifies have no profile",
        acked,
        Duration::from_secs(60),
        async |user| {
            http.get(profiles.url(&format!("/profiles/{user}")))
                .bearer_auth(key)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_runs_on_a_jetstream_cluster_and_a_redis_cluster() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start_cluster();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    // The streams of the contract are replicated on all three nodes.
    let mut events = js.get_stream("EVENTS").await.expect("EVENTS");
    let info = events.info().await.expect("info");
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.cluster.as_ref().expect("clustered").replicas.len(), 2);

    let ingress = stack.ingress().await;
    let profiles = stack.profiles().await;
    let accounts = stack.accounts().await;
    let automations = stack.automations().await;
    let delivery = stack.delivery().await;
    let forwarder = stack
        .forwarder_with(stack.forwarder_settings(&new_encryption_key()))
        .await;
    let dp = DataPlane::start(WRITE_KEY).await;
    put_provider(
        &delivery,
        &key,
        "inbox",
        json!({"type": "inbox", "channels": ["inbox"]}),
    )
    .await;
    let r = put_integration(
        &forwarder,
        &key,
        json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(), "enabled": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let (s, body) = call(&automations, &key, reqwest::Method::POST, "/automations/mappings",
        Some(json!({"event": "Order Shipped", "template": {"id": "shipping", "name": "Shipping", "steps": [
            {"action": "send", "recipient": "refs.data.userId",
             "message": {"content": {"title": "Shipped", "body": "{{order_id}} is on its way"}}}]}}))).await;
    assert_eq!(s, 201, "{body}");

    let post = async |event: Value| {
        let (s, body) = call(
            &ingress,
            &key,
            reqwest::Method::POST,
            "/inbound/rudderstack",
            Some(event),
        )
        .await;
        assert_eq!(s, 202, "{body}");
    };
    post(
        json!({"type": "identify", "userId": "u_1", "messageId": "c-1", "traits": {"name": "Ada"}}),
    )
    .await;
    post(json!({"type": "group", "userId": "u_1", "groupId": "team_1", "messageId": "c-2", "traits": {"name": "Team"}})).await;
    post(
        json!({"type": "track", "event": "Order Shipped", "userId": "u_1", "messageId": "c-3",
        "properties": {"order_id": "ord_9"}}),
    )
    .await;

    eventually("profile", Duration::from_secs(20), async || {
        let (s, p) = call(&profiles, &key, reqwest::Method::GET, "/profiles/u_1", None).await;
        s == 200 && p.to_string().contains("Ada")
    })
    .await;
    eventually(
        "tenant with its member",
        Duration::from_secs(20),
        async || {
            let (s, t) = call(
                &accounts,
                &key,
                reqwest::Method::GET,
                "/users/u_1/tenants",
                None,
            )
            .await;
            s == 200 && t.to_string().contains("team_1")
        },
    )
    .await;
    eventually("inbox message", Duration::from_secs(20), async || {
        let (s, inbox) = call(&delivery, &key, reqwest::Method::GET, "/inbox/u_1", None).await;
        s == 200 && inbox.to_string().contains("ord_9 is on its way")
    })
    .await;
    eventually(
        "Message Delivered at the data plane",
        Duration::from_secs(20),
        async || {
            dp.events()
                .iter()
                .any(|e| e["event"] == "Message Delivered" && e["userId"] == "u_1")
        },
    )
    .await;
}

/// kill -9 of the nats-server that leads EVENTS under load: every identify the ingress
/// acknowledged becomes a profile, the ingress refuses (503, retryable) only briefly while a new
/// leader is elected, and the killed node rejoins and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_events_leader_loses_no_acknowledged_event() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start_cluster();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let ingress = Arc::new(stack.ingress().await);
    let profiles = stack.profiles().await;

    let load = Arc::new(Mutex::new(Load::default()));
    let run = identify_load(ingress.clone(), key.clone(), "u", 1_200, 150, load.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = stack
        .nats
        .stream_leader(&js, "EVENTS")
        .await
        .expect("EVENTS has a leader");
    stack.nats.kill_node(leader);
    let killed_at = Instant::now();
    eventually("a new EVENTS leader", Duration::from_secs(20), async || {
        stack
            .nats
            .stream_leader(&js, "EVENTS")
            .await
            .is_some_and(|l| l != leader)
    })
    .await;
    let elected_in = killed_at.elapsed();
    run.await.expect("load");

    let load = std::mem::take(&mut *load.lock().unwrap());
    assert_eq!(load.acked.len(), 1_200, "every event is stored in the end");
    let refused = load.refusing.map(|(a, b)| b - a).unwrap_or_default();
    eprintln!(
        "EVENTS leader n{leader} killed: new leader in {elected_in:?}; ingress answered {} retryable errors over {refused:?}",
        load.retryable
    );
    assert!(
        refused < Duration::from_secs(15),
        "the ingress refused for {refused:?}"
    );
    assert_all_profiles(&profiles, &key, &load.acked).await;

    // The node comes back on its store and catches up with what it missed.
    stack.nats.restart_node(leader);
    let mut events = js.get_stream("EVENTS").await.expect("EVENTS");
    eventually(
        "every EVENTS replica current",
        Duration::from_secs(30),
        async || {
            let info = events.info().await.expect("info");
            let cluster = info.cluster.as_ref().expect("clustered");
            cluster.replicas.len() == 2
                && cluster
                    .replicas
                    .iter()
                    .all(|r| r.current && r.lag.unwrap_or(0) == 0)
        },
    )
    .await;
}

/// kill -9 of the Redis primary that holds the workspace's slot, under load, with
/// `wait_replicas = 1` (the production setting on a cluster): its replica takes over, the
/// services follow the new topology without a restart, effects wait (no ack) while the new
/// primary has no replica, the old primary rejoins as its replica, and every acknowledged
/// identify becomes a profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_redis_primary_fails_over_and_loses_no_acknowledged_effect() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start_cluster();
    let key = stack.workspace("acme").await;
    let ingress = Arc::new(stack.ingress().await);
    let mut settings = stack.profiles_settings();
    settings.redis.wait_replicas = 1;
    let profiles = Service::spawn(|listener, shutdown| async move {
        profiles::run(settings, Some(listener), shutdown).await
    })
    .await;

    let load = Arc::new(Mutex::new(Load::default()));
    let run = identify_load(ingress.clone(), key.clone(), "r", 1_200, 150, load.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let slot_key = rc_common::keys::user_profile("acme", "r-0");
    let primary = stack.redis.primary_for(&slot_key);
    stack.redis.kill_node(primary);
    let killed_at = Instant::now();
    eventually(
        "the replica took over",
        Duration::from_secs(20),
        async || stack.redis.primary_for(&slot_key) != primary,
    )
    .await;
    let failover = killed_at.elapsed();
    // The old primary comes back (as Kubernetes restarts a pod) and becomes the new one's replica.
    stack.redis.restart_node(primary);
    assert!(
        !stack.redis.is_primary(primary),
        "it came back as a replica"
    );
    run.await.expect("load");
    let load = std::mem::take(&mut *load.lock().unwrap());
    eprintln!(
        "Redis primary {primary} killed: replica promoted in {failover:?}, back as a replica after {:?}; ingress answered {} retryable errors",
        killed_at.elapsed(),
        load.retryable
    );
    assert_eq!(load.acked.len(), 1_200);
    assert_all_profiles(&profiles, &key, &load.acked).await;
}

/// A rolling restart of every consumer and API service, two replicas each, under load (on the clusters, as in
/// production): each replica in turn gets SIGTERM, drains, and starts again while the other
/// serves. Every acknowledged event is applied, and no message is sent twice (each user's
/// inbox holds exactly one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_sends_nothing_twice() {
    use rc_tests::ServiceProcess;
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start_cluster();
    let key = stack.workspace("acme").await;
    let mut env = stack.service_env();
    env.push(("RC_SHUTDOWN__READINESS_GRACE_MS", "200".into()));
    env.push(("RC_SECRETS__ENCRYPTION_KEY", new_encryption_key()));
    // The fake data plane is plain http on loopback.
    env.push(("RC_OUTBOUND__ALLOW_PRIVATE_NETWORKS", "true".into()));
    env.push(("RC_FORWARDER__ALLOW_HTTP", "true".into()));
    const BINARIES: [&str; 6] = [
        "rc-ingress",
        "rc-profiles",
        "rc-accounts",
        "rc-automations",
        "rc-delivery",
        "rc-forwarder",
    ];
    let mut replicas = Vec::new();
    for binary in BINARIES {
        for _ in 0..2 {
            replicas.push((binary, ServiceProcess::start(binary, &env).await));
        }
    }
    let base_url = |replicas: &[(&str, ServiceProcess)], binary: &str| {
        replicas
            .iter()
            .find(|(b, _)| *b == binary)
            .map(|(_, p)| p.url(""))
            .unwrap()
    };
    let delivery_url = |replicas: &[(&str, ServiceProcess)]| base_url(replicas, "rc-delivery");
    let http = http();
    let r = http
        .put(format!("{}/providers/inbox", delivery_url(&replicas)))
        .bearer_auth(&key)
        .json(&json!({"type": "inbox", "channels": ["inbox"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let dp = DataPlane::start(WRITE_KEY).await;
    let r = http
        .put(format!(
            "{}/integrations/rudderstack",
            base_url(&replicas, "rc-forwarder")
        ))
        .bearer_auth(&key)
        .json(&json!({"writeKey": WRITE_KEY, "dataPlaneUrl": dp.url(), "enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Load: inline sends to one user each, spread over both ingress replicas, retried on
    // 503/429 or a refused connection (a replica restarting) like RudderStack would.
    let ingress_urls: Vec<String> = replicas
        .iter()
        .filter(|(b, _)| *b == "rc-ingress")
        .map(|(_, p)| p.url("/inbound/rudderstack"))
        .collect();
    const EVENTS: usize = 600;
    let acked = Arc::new(Mutex::new(Load::default()));
    let load = {
        let (http, key, acked) = (http.clone(), key.clone(), acked.clone());
        let ingress_urls = Arc::new(ingress_urls);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            let mut sends = tokio::task::JoinSet::new();
            for i in 0..EVENTS {
                tick.tick().await;
                let (http, key, acked) = (http.clone(), key.clone(), acked.clone());
                let urls = ingress_urls.clone();
                sends.spawn(async move {
                    let user = format!("w-{i}");
                    // A send (automations → delivery → forwarder) and a membership (accounts),
                    // stored together or not at all.
                    let event = json!({"batch": [
                        {"type": "track", "event": "Ping", "userId": user, "messageId": format!("m-{user}"),
                         "properties": {"courier": {"automation": {"steps": [{"action": "send",
                            "message": {"to": {"user_id": user}, "content": {"title": "Ping", "body": "pong"}}}]}}}},
                        {"type": "group", "userId": user, "groupId": format!("team-{}", i % 10),
                         "messageId": format!("g-{user}"), "traits": {"name": "Team"}}]});
                    store(&http, &urls, i, &key, &event, &acked).await;
                    acked.lock().unwrap().acked.insert(user);
                });
            }
            while sends.join_next().await.is_some() {}
        })
    };

    // Roll: every replica in turn, SIGTERM (it drains), then started again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (binary, process) in replicas.iter_mut() {
        let exit = process.terminate(Duration::from_secs(20)).await;
        let (status, took) = exit.unwrap_or_else(|| panic!("{binary} did not drain in time"));
        assert!(status.success(), "{binary} exited with {status}");
        eprintln!("{binary} drained in {took:?}");
        process.restart(binary, &env).await;
    }
    eprintln!(
        "rolled; {} of {EVENTS} acknowledged so far",
        acked.lock().unwrap().acked.len()
    );
    load.await.expect("load");
    let acked = std::mem::take(&mut acked.lock().unwrap().acked);
    assert_eq!(acked.len(), EVENTS);

    // Every membership, and "Message Delivered" at the data plane for every user.
    let accounts = base_url(&replicas, "rc-accounts");
    for user in &acked {
        let i: usize = user.trim_start_matches("w-").parse().unwrap();
        eventually("the membership", Duration::from_secs(60), async || {
            let tenants = http
                .get(format!("{accounts}/users/{user}/tenants"))
                .bearer_auth(&key)
                .send()
                .await
                .ok();
            match tenants {
                Some(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t.contains(&format!("team-{}", i % 10))),
                None => false,
            }
        })
        .await;
    }
    eventually(
        "Message Delivered for every user",
        Duration::from_secs(90),
        async || {
            let events = dp.events();
            acked.iter().all(|user| {
                events
                    .iter()
                    .any(|e| e["event"] == "Message Delivered" && e["userId"] == user.as_str())
            })
        },
    )
    .await;

    // Exactly one message in every user's inbox.
    let delivery = delivery_url(&replicas);
    until_all(
        "users never got their message",
        acked,
        Duration::from_secs(90),
        async |user| {
            let inbox: Value = http
                .get(format!("{delivery}/inbox/{user}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            match inbox["messages"].as_array().map(Vec::len) {
                Some(n) if n > 1 => panic!("{user} got {n} messages: {inbox}"),
                n => n == Some(1),
            }
        },
    )
    .await;
}

/// `wait_replicas = 1`: with the replica of the workspace's primary down, an identify is
/// written but not acknowledged to JetStream (it is retried, never dead-lettered); once the
/// replica is back, it is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_an_effect_is_acked_only_once_a_replica_has_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start_cluster();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let ingress = stack.ingress().await;
    let mut settings = stack.profiles_settings();
    settings.redis.wait_replicas = 1;
    let profiles = Service::spawn(|listener, shutdown| async move {
        profiles::run(settings, Some(listener), shutdown).await
    })
    .await;
    let slot_key = rc_common::keys::user_profile("acme", "u_1");
    let replicas = stack.redis.replicas_for(&slot_key);
    assert_eq!(replicas.len(), 1);
    stack.redis.kill_node(replicas[0]);

    let (s, body) = call(&ingress, &key, reqwest::Method::POST, "/inbound/rudderstack",
        Some(json!({"type": "identify", "userId": "u_1", "messageId": "w-1", "traits": {"name": "Ada"}}))).await;
    assert_eq!(s, 202, "{body}");
    eventually(
        "the profile written on the primary",
        Duration::from_secs(10),
        async || {
            call(&profiles, &key, reqwest::Method::GET, "/profiles/u_1", None)
                .await
                .0
                == 200
        },
    )
    .await;
    let profiles_durable = async || {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream("EVENTS")
            .await
            .expect("EVENTS")
            .get_consumer(rc_common::subjects::durables::PROFILES_EVENTS)
            .await
            .expect("profiles durable");
        let info = consumer.info().await.expect("info").clone();
        (info.num_ack_pending + info.num_pending as usize,)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unacked = profiles_durable().await.0;
    assert!(unacked >= 1, "acked although no replica has the write");

    stack.redis.restart_node(replicas[0]);
    eventually(
        "acked once the replica is back",
        Duration::from_secs(30),
        async || profiles_durable().await.0 == 0,
    )
    .await;
}

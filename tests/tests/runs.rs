//! The run list's filters (`GET /automations/runs`): per-workspace secondary indexes in a real
//! Redis, written by the store's run scripts, read through the real automations API. Runs are
//! written straight through the store (not the pipeline) so the fields and times are exact and
//! 100,000 of them take seconds.

use std::collections::HashSet;
use std::time::Instant;

use automations::store::{self, Run, RunState};
use futures::StreamExt;
use rc_common::redis::RedisConn;
use rc_tests::automations::fixture_run as run;
use rc_tests::{Service, Stack, call};
use redis::AsyncCommands;
use serde_json::Value;

/// Inserts as pending, then moves it to its state the way the engine does (save or retire).
async fn write(redis: &RedisConn, mut r: Run) {
    let state = r.state;
    r.state = RunState::Pending;
    assert!(store::insert_run(redis, &r, false).await.unwrap());
    if state == RunState::Pending {
        return;
    }
    r.state = state;
    if state.is_terminal() {
        store::retire_run(redis, &r, 3_600_000).await.unwrap();
    } else {
        store::save_run(redis, &r).await.unwrap();
    }
}

async fn get(svc: &Service, key: &str, path: &str) -> (u16, Value) {
    call(svc, key, reqwest::Method::GET, path, None).await
}

/// Every run id the list gives for `query`, following cursors with pages of `limit`.
async fn all_pages(svc: &Service, key: &str, query: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = format!("/automations/runs?limit={limit}&{query}");
    for _ in 0..1000 {
        let (s, body) = get(svc, key, &path).await;
        assert_eq!(s, 200, "{path}: {body}");
        for item in body["items"].as_array().unwrap() {
            ids.push(item["runId"].as_str().unwrap().to_string());
        }
        match body["next_url"].as_str() {
            Some(next) => path = next.to_string(),
            None => return ids,
        }
    }
    panic!("cursor never ended for {query}");
}

const BASE: i64 = 1_750_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_filters_combine_page_and_stay_in_their_workspace() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let other_key = stack.workspace("other").await;
    let svc = stack.automations().await;
    let redis = stack.redis_conn().await;

    // 60 runs: 3 events, 4 recipients (one hostile), 2 templates, 5 states, one message id
    // per two runs; two pairs share a millisecond (cursor ties).
    let events = ["signup", "order placed", "<img src=x onerror=1>"];
    let recipients = ["u_1", "u_2", "a:b}{%", "u_4"];
    let templates = ["welcome", "t/2"];
    let states = [
        RunState::Pending,
        RunState::Running,
        RunState::Waiting,
        RunState::Completed,
        RunState::Failed,
    ];
    let mut expected: Vec<Run> = Vec::new();
    for i in 0..60 {
        let created = BASE + (i as i64 / 2) * 1000 + (i as i64 % 2) * i64::from(i % 7 != 0);
        let mid = format!("m{}", i / 2);
        let r = run(
            "acme",
            i,
            created,
            states[i % 5],
            [events[i % 3], recipients[i % 4], templates[i % 2], &mid],
        );
        write(&redis, r.clone()).await;
        expected.push(r);
    }
    // Another workspace: same names and ids, other runs.
    for i in 0..10 {
        let r = run(
            "other",
            100 + i,
            BASE + i as i64,
            RunState::Failed,
            ["signup", "u_1", "welcome", "m0"],
        );
        write(&redis, r).await;
    }
    // Newest first; ties by id descending.
    expected.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
    let want = |f: &dyn Fn(&Run) -> bool| -> Vec<String> {
        expected
            .iter()
            .filter(|r| f(r))
            .map(|r| r.id.clone())
            .collect()
    };
    let enc = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let iso = |ms: i64| store::iso(ms);

    type Case<'a> = (String, Box<dyn Fn(&Run) -> bool + 'a>);
    let cases: Vec<Case> = vec![
        ("".into(), Box::new(|_| true)),
        (
            "status=failed".into(),
            Box::new(|r| r.state == RunState::Failed),
        ),
        (
            "status=pending".into(),
            Box::new(|r| r.state == RunState::Pending),
        ),
        (
            format!("event={}", enc(events[2])),
            Box::new(|r| r.event == events[2]),
        ),
        (
            format!("recipient={}", enc(recipients[2])),
            Box::new(|r| r.recipient() == recipients[2]),
        ),
        (
            format!("template={}", enc("t/2")),
            Box::new(|r| r.template == "t/2"),
        ),
        (
            "message_id=m7".into(),
            Box::new(|r| r.source_message_id == "m7"),
        ),
        (
            "event=signup&status=completed".into(),
            Box::new(|r| r.event == "signup" && r.state == RunState::Completed),
        ),
        (
            "event=signup&recipient=u_1&template=welcome".into(),
            Box::new(|r| r.event == "signup" && r.recipient() == "u_1" && r.template == "welcome"),
        ),
        (
            format!("since={}&until={}", BASE + 10_000, BASE + 20_000),
            Box::new(|r| (BASE + 10_000..BASE + 20_000).contains(&r.created_at_ms)),
        ),
        (
            format!(
                "status=waiting&since={}&until={}",
                enc(&iso(BASE + 5_000)),
                enc(&iso(BASE + 25_000))
            ),
            Box::new(|r| {
                r.state == RunState::Waiting
                    && (BASE + 5_000..BASE + 25_000).contains(&r.created_at_ms)
            }),
        ),
        ("event=nothing".into(), Box::new(|_| false)),
        (
            "status=failed&template=welcome&event=signup".into(),
            Box::new(|r| {
                r.state == RunState::Failed && r.template == "welcome" && r.event == "signup"
            }),
        ),
    ];
    for (query, f) in &cases {
        let expected_ids = want(f.as_ref());
        for limit in [1, 3, 100] {
            let got = all_pages(&svc, &key, query, limit).await;
            let unique: HashSet<&String> = got.iter().collect();
            assert_eq!(
                unique.len(),
                got.len(),
                "duplicates for {query:?} by {limit}"
            );
            assert_eq!(got, expected_ids, "{query:?} by {limit}");
        }
        // The first page's items carry the filtered fields.
        let (_, body) = get(&svc, &key, &format!("/automations/runs?{query}")).await;
        assert_eq!(
            body["items"].as_array().unwrap().len(),
            expected_ids.len().min(20),
            "{query}"
        );
    }

    // The other workspace sees only its own runs, and can't read acme's by id (nor acme theirs).
    let theirs = all_pages(&svc, &other_key, "event=signup", 100).await;
    assert_eq!(theirs.len(), 10);
    assert!(
        theirs.iter().all(|id| id.starts_with("r0001")),
        "{theirs:?}"
    );
    assert_eq!(
        get(&svc, &other_key, "/automations/runs/r000001").await.0,
        404
    );
    assert_eq!(get(&svc, &key, "/automations/runs/r000100").await.0, 404);

    // Bad filter values: 400 in the one error shape.
    for bad in [
        "status=lost",
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "event=",
        "recipient=a%0Ab",
        "cursor=garbage",
    ] {
        let (s, body) = get(&svc, &key, &format!("/automations/runs?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert_eq!(body["type"], "invalid_request_error", "{bad}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    svc.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_prunes_a_run_from_every_index() {
    let stack = Stack::start();
    let redis = stack.redis_conn().await;
    let fields = ["signup", "u_1", "welcome", "m1"];
    let mut old = run("acme", 1, BASE, RunState::Pending, fields);
    store::insert_run(&redis, &old, false).await.unwrap();
    old.state = RunState::Failed;
    // Retention of 1 ms: expired by the next retirement.
    store::retire_run(&redis, &old, 1).await.unwrap();
    let keys = [
        store::runs_key("acme"),
        store::status_key("acme", RunState::Failed),
        store::runs_by_key("acme", store::RunFilter::Event, "signup"),
        store::runs_by_key("acme", store::RunFilter::Recipient, "u_1"),
        store::runs_by_key("acme", store::RunFilter::Template, "welcome"),
        store::runs_by_key("acme", store::RunFilter::MessageId, "m1"),
    ];
    let mut conn = redis.clone();
    for k in &keys {
        let n: u64 = conn.zcard(k).await.unwrap();
        assert_eq!(n, 1, "{k} holds the run until its retention passes");
    }
    let pending: u64 = conn
        .zcard(store::status_key("acme", RunState::Pending))
        .await
        .unwrap();
    assert_eq!(pending, 0, "a run is in one status index");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut next = run("acme", 2, BASE + 1, RunState::Pending, ["e", "u", "t", "m"]);
    store::insert_run(&redis, &next, false).await.unwrap();
    next.state = RunState::Completed;
    store::retire_run(&redis, &next, 3_600_000).await.unwrap();
    for k in &keys {
        let ids: Vec<String> = conn.zrange(k, 0, -1).await.unwrap();
        assert!(!ids.contains(&old.id), "{k} still lists the expired run");
    }
    let indexed: u64 = conn.hlen(store::runs_indexed_key("acme")).await.unwrap();
    assert_eq!(indexed, 1, "only the live run's keys are remembered");
}

/// 100,000 runs in one workspace: a filtered page is right and is read from the indexes
/// (timings printed for the record; `make bench` is where speed is judged).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filtered_page_among_100000_runs() {
    const N: usize = 100_000;
    let stack = Stack::start();
    let key = stack.workspace("big").await;
    let svc = stack.automations().await;
    let redis = stack.redis_conn().await;
    let started = Instant::now();
    let states = [RunState::Completed, RunState::Waiting, RunState::Failed];
    futures::stream::iter(0..N)
        .map(|i| {
            let redis = redis.clone();
            async move {
                let event = format!("e{}", i % 10);
                let recipient = format!("u_{}", i % 1000);
                let template = format!("t{}", i % 7);
                let message_id = format!("m{i}");
                // Straight into its final state's index (one script per run).
                let r = run(
                    "big",
                    i,
                    BASE + i as i64,
                    states[i % 3],
                    [&event, &recipient, &template, &message_id],
                );
                store::insert_run(&redis, &r, false).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<()>()
        .await;
    println!("wrote {N} runs in {:?}", started.elapsed());

    // Recipient u_42 (100 runs), event e2 (i % 10 == 2 ⇒ i ≡ 42 mod 1000 gives i % 10 == 2: all
    // 100), failed (i % 3 == 2): newest first.
    let expected: Vec<String> = (0..N)
        .rev()
        .filter(|i| i % 1000 == 42 && i % 3 == 2)
        .map(|i| format!("r{i:06}"))
        .collect();
    let query = "recipient=u_42&event=e2&status=failed";
    for path in [
        format!("/automations/runs?{query}&limit=100"),
        "/automations/runs?status=failed&limit=100".into(),
        "/automations/runs?limit=100".into(),
        format!("/automations/runs?message_id=m77777&since={}", BASE),
    ] {
        let t = Instant::now();
        let (s, body) = get(&svc, &key, &path).await;
        println!("{path}: {:?}", t.elapsed());
        assert_eq!(s, 200, "{body}");
        let ids: Vec<&str> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["runId"].as_str().unwrap())
            .collect();
        if path.contains("recipient") {
            assert_eq!(ids, expected, "the filtered page");
            assert_eq!(body["has_more"], false);
        } else if path.contains("message_id") {
            assert_eq!(ids, ["r077777"]);
        } else if path.contains("failed") {
            let want: Vec<String> = (0..N)
                .rev()
                .filter(|i| i % 3 == 2)
                .take(100)
                .map(|i| format!("r{i:06}"))
                .collect();
            assert_eq!(ids, want);
        } else {
            assert_eq!(ids.len(), 100);
            assert_eq!(ids[0], format!("r{:06}", N - 1));
        }
    }
    svc.stop().await.expect("clean stop");
}

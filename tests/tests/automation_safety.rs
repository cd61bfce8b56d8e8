//! Issue 14, automations: bounded evaluation, poison events and runs.
//!
//! - The `if` language and the automation contract (`rc_common::automation`) under deep, huge
//!   and arbitrary inputs, on a thread with a 256 KiB stack: a recursion the bounds missed
//!   overflows it and aborts this test binary.
//! - The ingress refuses invalid inline automations with a 400 and the path; nothing is stored.
//! - Poison events published straight to NATS (as a hostile or older producer would) to the real
//!   rc-automations binary are dead-lettered with the reason and shown failed in the catalog,
//!   while another workspace's inline sends keep landing in its inbox.
//! - A stored run whose claimers keep dying is quarantined instead of executed again.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use prost::Message as _;
use rc_common::automation::{self as contract, expr};
use rc_common::subjects::{COURIER_STREAM, DLQ_STREAM, EVENTS_STREAM, dlq_headers};
use rc_tests::automations::{publish_track, wait_for_messages};
use rc_tests::forwarder::eventually;
use rc_tests::{ServiceProcess, Stack, call, stored_messages};
use serde_json::{Value, json};

const SMALL_STACK: usize = 256 * 1024;

/// Runs `f` on a thread with a 256 KiB stack (the input is built, used and dropped there).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// The three `if` expressions that overflowed rc-automations' stack before the bounds.
fn exploits() -> [String; 3] {
    [
        format!("{}a{}", "(".repeat(5_000), ")".repeat(5_000)),
        format!("{}a", "!".repeat(100_000)),
        vec!["a && a"; 20_000].join(" && "),
    ]
}

fn parse_and_eval(src: &str) -> Result<bool, String> {
    let e = expr::parse(src)?;
    Ok(expr::eval(&e, &|p: &str| json!(p.len() % 3)))
}

#[test]
fn the_three_exploits_are_refused_before_any_work() {
    for src in exploits() {
        let len = src.len();
        let err = on_small_stack(move || parse_and_eval(&src)).unwrap_err();
        assert_eq!(err, format!("expression is {len} bytes; the limit is 1024"));
    }
    // Within the length bound, nesting is what stops them.
    let parens = format!("{}a{}", "(".repeat(500), ")".repeat(500));
    let nots = format!("{}a", "!".repeat(1_000));
    for src in [parens, nots] {
        let err = on_small_stack(move || parse_and_eval(&src)).unwrap_err();
        assert!(err.starts_with("nested deeper than 32"), "{err}");
    }
    // And a long chain is one flat node, evaluated without depth.
    let chain = vec!["a"; 300].join("&&");
    assert_eq!(on_small_stack(move || parse_and_eval(&chain)), Ok(true));
}

const TOKENS: [&str; 22] = [
    "(", ")", "!", "&&", "||", "==", "!=", ">", ">=", "<", "<=", "a", "data.x", "refs.b.c", "1",
    "-2.5", "'s'", "\"t\"", "true", "null", " ", "@",
];

fn token_soup(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&TOKENS[..]), 0..max).prop_map(|t| t.concat())
}

/// Deep: one opener repeated up to 20,000 times, maybe closed; with whether the parser must
/// accept it (within the length and nesting bounds, and balanced).
fn deep_expr() -> impl Strategy<Value = (String, bool)> {
    (
        0usize..20_000,
        prop::sample::select(vec![
            ("(", 1),
            ("!", 1),
            ("!(", 2),
            ("(!", 2),
            ("a&&(", 1),
            ("a||!(", 2),
        ]),
        any::<bool>(),
    )
        .prop_map(|(n, (open, levels), close)| {
            let parens = n * open.matches('(').count();
            let closers = if close {
                ")".repeat(parens)
            } else {
                String::new()
            };
            let src = format!("{}a{closers}", open.repeat(n));
            let ok = src.len() <= expr::MAX_EXPR_BYTES
                && n * levels <= expr::MAX_EXPR_DEPTH
                && (close || parens == 0);
            (src, ok)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn deep_expressions_are_refused_past_the_nesting_bound((src, ok) in deep_expr()) {
        let out = on_small_stack(move || parse_and_eval(&src));
        prop_assert_eq!(out.is_ok(), ok, "{:?}", out);
    }

    #[test]
    fn any_expression_is_parsed_and_evaluated_without_overflow(
        src in prop_oneof![token_soup(40_000), token_soup(300), "\\PC{0,3000}"],
    ) {
        let len = src.len();
        let out = on_small_stack(move || parse_and_eval(&src));
        if len > expr::MAX_EXPR_BYTES {
            prop_assert_eq!(out, Err(format!("expression is {len} bytes; the limit is 1024")));
        }
    }

    #[test]
    fn automation_documents_are_bounded_in_depth(depth in 1usize..120, arrays in any::<bool>()) {
        // A step's `data` nested `depth` deep; the document adds 3 levels (automation, steps,
        // step) and `data` itself one.
        let inner = if arrays {
            format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!("{}1{}", "{\"k\":".repeat(depth), "}".repeat(depth))
        };
        let doc = format!(r#"{{"steps":[{{"action":"send","template":"T","data":{{"d":{inner}}}}}]}}"#);
        let total = depth + 4;
        // Parsed here (serde_json bounds its own recursion at 128); checked and dropped there.
        let v: Value = serde_json::from_str(&doc).unwrap();
        let out = on_small_stack(move || contract::validate_inline(&v));
        if total > contract::MAX_JSON_DEPTH {
            prop_assert_eq!(out, Err("properties.courier.automation: nested deeper than 32 levels".to_string()));
        } else {
            prop_assert_eq!(out, Ok(()));
        }
    }

    #[test]
    fn step_counts_and_ref_paths_are_bounded(
        steps in 0usize..400,
        segments in prop::collection::vec("[a-z0-9_]{1,40}", 1..40),
    ) {
        let path = segments.join(".");
        let (n, p) = (steps, path.clone());
        let out = on_small_stack(move || {
            let mut list = vec![json!({"action": "delay", "duration": "1s"}); n];
            list.push(json!({"action": "send", "template": "T", "data": {"x": {"$ref": p}}}));
            contract::validate_inline(&json!({"steps": list}))
        });
        let ok_path = path.len() <= contract::MAX_REF_BYTES && segments.len() <= contract::MAX_REF_SEGMENTS;
        if steps + 1 > contract::MAX_STEPS {
            prop_assert_eq!(out, Err(format!("properties.courier.automation.steps: {} steps; the limit is 100", steps + 1)));
        } else if ok_path {
            prop_assert_eq!(out, Ok(()));
        } else {
            let err = out.unwrap_err();
            prop_assert!(err.starts_with(&format!("properties.courier.automation.steps[{steps}]: $ref path")), "{}", err);
        }
    }

    #[test]
    fn durations_and_sizes_never_panic_and_are_bounded(text in "\\PC{0,200}", big in 0usize..100_000) {
        let len = text.len();
        let out = contract::parse_duration(&text);
        if len > contract::MAX_DELAY_TEXT_BYTES {
            prop_assert!(out.unwrap_err().contains("the limit is 64"));
        } else if let Ok(ms) = out {
            prop_assert!(ms <= contract::MAX_DELAY_MS);
        }
        let doc = json!({"data": {"blob": "x".repeat(big)}, "steps": []});
        let out = contract::validate_inline(&doc);
        // As compact JSON the document is `big` + 31 bytes, its `data` `big` + 11.
        if big + 31 > contract::MAX_AUTOMATION_BYTES {
            prop_assert!(out.unwrap_err().contains("larger than the limit of 65536 bytes"));
        } else if big + 11 > contract::MAX_DATA_BYTES {
            prop_assert!(out.unwrap_err().starts_with("properties.courier.automation.data: larger than the limit of 32768"));
        } else {
            prop_assert_eq!(out, Ok(()));
        }
    }
}

/// Inline automations that the automations consumer would refuse (the three exploits among
/// them), each with the reason it gets.
fn invalid_inline_automations() -> Vec<(Value, String)> {
    let [parens, nots, chain] = exploits();
    let p = "properties.courier.automation";
    let len = parens.len();
    let step = |src: String| json!({"steps": [{"action": "send", "template": "T", "if": src}]});
    // The 10 KB one fails on the expression's length; the 100 KB and 200 KB ones already on
    // the document's size, which is checked first.
    let mut cases = vec![
        (
            step(parens),
            format!("{p}.steps[0].if: expression is {len} bytes; the limit is 1024"),
        ),
        (
            step(nots),
            format!("{p}: larger than the limit of 65536 bytes (as JSON)"),
        ),
        (
            step(chain),
            format!("{p}: larger than the limit of 65536 bytes (as JSON)"),
        ),
    ];
    cases.push((
        json!({"steps": vec![json!({"action": "delay", "duration": "1s"}); 101]}),
        format!("{p}.steps: 101 steps; the limit is 100"),
    ));
    cases.push((
        json!({"steps": [{"action": "delay", "duration": "99999999999999999999 days"}]}),
        format!(
            "{p}.steps[0].duration: \"99999999999999999999 days\" is longer than the limit of 366 days"
        ),
    ));
    cases.push((
        json!({"steps": [{"action": "fly"}]}),
        format!(
            "{p}.steps[0].action: unknown action \"fly\" (one of send, send-list, delay, cancel, update-profile, invoke, fetch-data)"
        ),
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_refuses_invalid_inline_automations_and_stores_nothing() {
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let mut settings = stack.ingress_settings();
    // Big enough for the 100,000 `!` event, so the contract (not the size cap) answers.
    settings.ingress.max_event_bytes = 512 * 1024;
    let ingress = stack.ingress_with(settings).await;
    let js = stack.jetstream().await;
    let track = |i: usize, automation: &Value| {
        json!({"type": "track", "event": "Trial Ending", "userId": "u_1", "messageId": format!("m-{i}"),
               "properties": {"plan": "pro", "courier": {"automation": automation}}})
    };
    for (i, (automation, reason)) in invalid_inline_automations().iter().enumerate() {
        let (s, body) = call(
            &ingress,
            &key,
            reqwest::Method::POST,
            "/inbound/rudderstack",
            Some(track(i, automation)),
        )
        .await;
        assert_eq!(s, 400, "{reason}: {body}");
        assert_eq!(body["message"], *reason);
        assert_eq!(body["type"], "invalid_request_error");
    }
    // In a batch, the bad event is named by index and nothing of the batch is stored.
    let good = json!({"steps": [{"action": "send", "template": "T", "if": "data.plan == 'pro'"}]});
    let (bad, _) = &invalid_inline_automations()[0];
    let (s, body) = call(
        &ingress,
        &key,
        reqwest::Method::POST,
        "/inbound/rudderstack",
        Some(json!({"batch": [track(100, &good), track(101, bad)]})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["errors"][0]["index"], 1, "{body}");
    assert!(
        stored_messages(&js, EVENTS_STREAM, "events.acme.>")
            .await
            .is_empty(),
        "nothing published"
    );
    // The same event with a valid automation is accepted and stored.
    let (s, body) = call(
        &ingress,
        &key,
        reqwest::Method::POST,
        "/inbound/rudderstack",
        Some(track(200, &good)),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        stored_messages(&js, EVENTS_STREAM, "events.acme.>")
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_straight_to_nats_are_dead_lettered_while_another_workspace_is_served() {
    let stack = Stack::start();
    let evil = stack.workspace("evil").await;
    let good = stack.workspace("good").await;
    let js = stack.jetstream().await;
    let mut env = stack.service_env();
    env.push(("RC_AUTOMATIONS__POLL_INTERVAL_MS", "100".into()));
    env.push(("RC_AUTOMATIONS__LEASE_MS", "3000".into()));
    let automations = ServiceProcess::start("rc-automations", &env).await;
    let delivery = stack.delivery().await;
    let (s, body) = call(
        &delivery,
        &good,
        reqwest::Method::PUT,
        "/providers/inbox",
        Some(json!({"type": "inbox"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // A good workspace's inline send, its arrival in the inbox timed.
    let send_good = async |i: usize| {
        let automation = json!({"steps": [{"action": "send", "message": {
            "to": {"user_id": "u_g"}, "content": {"title": format!("hello {i}"), "body": "b"},
            "routing": {"channels": ["inbox"]}}}]});
        let id = format!("good-{i}");
        publish_track(
            &js,
            "good",
            &id,
            "Ping",
            &json!({"courier": {"automation": automation}}),
        )
        .await;
        let started = Instant::now();
        let title = format!("hello {i}");
        eventually(
            "the good workspace's inbox message",
            Duration::from_secs(15),
            async || {
                let (_, inbox) =
                    call(&delivery, &good, reqwest::Method::GET, "/inbox/u_g", None).await;
                inbox["messages"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["title"] == title.as_str()))
            },
        )
        .await;
        started.elapsed()
    };

    let cases = invalid_inline_automations();
    let mut took = vec![send_good(0).await];
    for (i, (automation, _)) in cases.iter().enumerate() {
        let id = format!("poison-{i}");
        let automation = json!({"courier": {"automation": automation}});
        publish_track(&js, "evil", &id, &format!("Poison {i}"), &automation).await;
        took.push(send_good(i + 1).await);
    }
    // Generous bound for a loaded 2-core machine; before the fix nothing arrived at all (the
    // process aborted on the first poison event and on every restart).
    for t in &took {
        assert!(*t < Duration::from_secs(10), "{took:?}");
    }

    let dead = wait_for_messages(
        &js,
        DLQ_STREAM,
        "dlq.automations.evil",
        cases.len(),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(dead.len(), cases.len());
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            let h = m.headers.as_ref().unwrap();
            assert_eq!(
                h.get(dlq_headers::ORIGINAL_SUBJECT).unwrap().as_str(),
                "events.evil.track"
            );
            h.get(dlq_headers::REASON).unwrap().as_str().to_string()
        })
        .collect();
    let mut expected: Vec<String> = cases.iter().map(|c| c.1.clone()).collect();
    reasons.sort();
    expected.sort();
    assert_eq!(reasons, expected);
    for (i, (_, reason)) in cases.iter().enumerate() {
        let (s, entry) = call(
            &automations,
            &evil,
            reqwest::Method::GET,
            &format!("/automations/events/Poison%20{i}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{entry}");
        assert_eq!(entry["status"], "failed", "{entry}");
        assert_eq!(entry["last_error"]["reason"], *reason);
        assert_eq!(entry["last_error"]["message_id"], format!("poison-{i}"));
    }
    // The same process served all of it, and nothing of the poison ran.
    let r = reqwest::get(automations.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        stored_messages(&js, COURIER_STREAM, "courier.evil.>")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_claimers_keep_dying_is_quarantined_not_executed_again() {
    use automations::store::{CLAIMS_KEY, DUE_KEY, due_member};
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.automations().await;
    let start = async |idem: &str, delay: &str| {
        let steps = json!([{"action": "delay", "duration": delay}, {"action": "send", "template": "AFTER"}]);
        let r = reqwest::Client::new()
            .post(svc.url("/automations/invoke"))
            .bearer_auth(&key)
            .header("idempotency-key", idem)
            .json(&json!({"automation": {"steps": steps}, "recipient": "u_1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["runId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let poisoned = start("poisoned", "1s").await;
    // Due only after the dead claims below, then claimed and executed by a live service.
    let healthy = start("healthy", "5s").await;
    // Both wait in their delay now; stop the service so that nothing else claims them.
    let get_run = async |svc: &rc_tests::Service, id: &str| {
        call(
            svc,
            &key,
            reqwest::Method::GET,
            &format!("/automations/runs/{id}"),
            None,
        )
        .await
        .1
    };
    for id in [&poisoned, &healthy] {
        eventually("run waiting", Duration::from_secs(10), async || {
            get_run(&svc, id).await["state"] == "waiting"
        })
        .await;
    }
    svc.stop().await.expect("stopped cleanly");

    // Three claimers take the poisoned run once it is due and die without finishing it (they
    // claim and never execute, as a process that aborts mid-step does).
    let mut conn = stack.redis_conn().await;
    let member = due_member("acme", &poisoned);
    let dead_claimer = rc_tests::automations::dead_replica(&stack).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut claims = 0;
    while claims < automations::scheduler::MAX_DEAD_CLAIMS {
        assert!(Instant::now() < deadline, "the run never became due");
        let claimed = automations::scheduler::claim(&dead_claimer, 10)
            .await
            .unwrap();
        if let Some((_, n)) = claimed.iter().find(|(m, _)| *m == member) {
            claims = *n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A live service claims it a fourth time: quarantined, its send never executed. The
    // healthy run, claimed by that live service, completes.
    let svc = stack.automations().await;
    eventually("run quarantined", Duration::from_secs(15), async || {
        get_run(&svc, &poisoned).await["state"] == "failed"
    })
    .await;
    let run = get_run(&svc, &poisoned).await;
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with("quarantined: its last 3 executions ended without finishing"),
        "{run}"
    );
    let last = run["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["detail"], error);
    eventually(
        "healthy run completed",
        Duration::from_secs(15),
        async || get_run(&svc, &healthy).await["state"] == "completed",
    )
    .await;
    let sent: Vec<String> = stored_messages(&js, COURIER_STREAM, "courier.acme.message.requested")
        .await
        .iter()
        .map(|m| {
            rc_proto::MessageRequest::decode(m.payload.as_ref())
                .unwrap()
                .run_id
        })
        .collect();
    assert_eq!(
        sent,
        std::slice::from_ref(&healthy),
        "only the healthy run sent"
    );
    // Both left the due index and the claim counts.
    for id in [&poisoned, &healthy] {
        let m = due_member("acme", id);
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(DUE_KEY)
            .arg(&m)
            .query_async(&mut conn)
            .await
            .unwrap();
        let count: Option<i64> = redis::cmd("HGET")
            .arg(CLAIMS_KEY)
            .arg(&m)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((score, count), (None, None), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stored_with_an_exploit_if_fail_with_the_reason_instead_of_aborting() {
    use automations::store::{DUE_KEY, due_member, now_ms, run_key};
    let stack = Stack::start();
    let key = stack.workspace("acme").await;
    let js = stack.jetstream().await;
    let svc = stack.automations().await;
    // As an older version stored them (it validated nothing): due now, at a step whose `if` is
    // one of the exploits. Before the bounds, evaluating it overflowed the stack.
    let mut conn = stack.redis_conn().await;
    let now = now_ms();
    for (i, src) in exploits().into_iter().enumerate() {
        let run = json!({"id": format!("old-{i}"), "workspace": "acme", "state": "running",
            "template": "", "steps": [{"action": "send", "template": "T", "if": src}],
            "cancelation_token": null, "context": {"data": {}, "recipient": "u_1"}, "step": 0,
            "wake_at_ms": null, "event": "", "source_message_id": "", "timeline": [],
            "created_at_ms": now, "updated_at_ms": now, "started_at_ms": now, "error": null});
        let _: () = redis::pipe()
            .set(run_key("acme", &format!("old-{i}")), run.to_string())
            .zadd(DUE_KEY, due_member("acme", &format!("old-{i}")), now)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for (i, src) in exploits().into_iter().enumerate() {
        let path = format!("/automations/runs/old-{i}");
        eventually("the old run failed", Duration::from_secs(15), async || {
            call(&svc, &key, reqwest::Method::GET, &path, None).await.1["state"] == "failed"
        })
        .await;
        let (_, run) = call(&svc, &key, reqwest::Method::GET, &path, None).await;
        assert_eq!(
            run["error"],
            format!(
                "steps[0].if: expression is {} bytes; the limit is 1024",
                src.len()
            )
        );
    }
    assert!(
        stored_messages(&js, COURIER_STREAM, "courier.acme.message.requested")
            .await
            .is_empty()
    );
}

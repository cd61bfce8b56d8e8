//! Issue 12's console over plain HTTP: sign-in, CSRF refusal, security headers, the
//! unauthenticated redirect, escaping of hostile event names, and workspace isolation.
//! The console runs in-process against a real automations service (real NATS and Redis).

use std::time::Duration;

use rc_tests::automations::publish_track;
use rc_tests::profiles::eventually;
use rc_tests::{Service, Stack};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE, X_FRAME_OPTIONS};
use serde_json::json;

const XSS: &str = "<img src=x onerror=alert(1)>";

async fn console(api: &Service) -> Service {
    let mut settings = console::Settings::default();
    settings.console.api_url = api.url("");
    Service::spawn(|listener, shutdown| async move {
        console::run(settings, Some(listener), shutdown).await
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of `name=` in the response's Set-Cookie headers.
fn cookie_of(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (k, rest) = v.split_once('=')?;
        (k == name).then(|| rest.split(';').next().unwrap_or("").to_string())
    })
}

/// An `application/x-www-form-urlencoded` body.
fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..at + 64].to_string()
}

/// Signs in with `key`; answers the session cookie header value.
async fn sign_in(c: &reqwest::Client, console: &Service, key: &str) -> String {
    let form = c.get(console.url("/console/signin")).send().await.unwrap();
    let pre = cookie_of(&form, "rc_console_signin").unwrap();
    let token = csrf_in(&form.text().await.unwrap());
    let resp = c
        .post(console.url("/console/signin"))
        .header("cookie", format!("rc_console_signin={pre}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("api_key", key), ("csrf", &token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"));
    format!("rc_console={}", cookie_of(&resp, "rc_console").unwrap())
}

async fn get(
    c: &reqwest::Client,
    console: &Service,
    session: &str,
    path: &str,
) -> (StatusCode, String) {
    let r = c
        .get(console.url(path))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// A workspace's mappings, as the automations API lists them.
async fn mappings_of(automations: &Service, key: &str) -> serde_json::Value {
    let path = "/automations/mappings";
    rc_tests::call(automations, key, reqwest::Method::GET, path, None)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_csrf_headers_escaping_and_isolation() {
    let stack = Stack::start();
    let js = stack.jetstream().await;
    let key_a = stack.workspace("ws-a").await;
    let key_b = stack.workspace("ws-b").await;
    let automations = stack.automations().await;
    let console = console(&automations).await;
    let c = client();

    // Unauthenticated: every page sends to the sign-in form; `/` leads to the console.
    let r = c
        .get(console.url("/console/rudderstack"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/signin");
    let r = c.get(console.url("/")).send().await.unwrap();
    assert!(r.status().is_redirection());

    // Security headers on every page.
    let r = c.get(console.url("/console/signin")).send().await.unwrap();
    let csp = r.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(r.headers()[X_FRAME_OPTIONS], "DENY");
    assert!(r.headers().contains_key("referrer-policy"));
    let html = r.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");

    // Sign-in without the double-submit cookie is refused, a wrong key is refused.
    let r = c
        .post(console.url("/console/signin"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("api_key", key_a.as_str()), ("csrf", "x")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(cookie_of(&r, "rc_console").is_none());
    let form = c.get(console.url("/console/signin")).send().await.unwrap();
    let pre = cookie_of(&form, "rc_console_signin").unwrap();
    let token = csrf_in(&form.text().await.unwrap());
    let r = c
        .post(console.url("/console/signin"))
        .header("cookie", format!("rc_console_signin={pre}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("api_key", "rk_wrong"), ("csrf", &token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("That API key was refused.") && page.contains("<form"),
        "a person gets the form again, not a JSON error: {page}"
    );

    let session_a = sign_in(&c, &console, &key_a).await;
    let session_b = sign_in(&c, &console, &key_b).await;

    // A hostile event name in A renders as text; B never sees it.
    publish_track(&js, "ws-a", "m-xss", XSS, &json!({"note": XSS})).await;
    let html = eventually("the event on A's page", Duration::from_secs(20), || async {
        let (status, html) = get(&c, &console, &session_a, "/console/rudderstack").await;
        assert_eq!(status, StatusCode::OK);
        html.contains("&lt;img src=x onerror=alert(1)&gt;")
            .then_some(html)
    })
    .await;
    assert!(!html.contains(XSS), "the name is never markup");
    assert!(!html.contains(&key_a), "the key is never in a page");
    let (_, html_b) = get(&c, &console, &session_b, "/console/rudderstack").await;
    assert!(!html_b.contains("onerror"), "B sees none of A's events");
    let (_, event) = get(
        &c,
        &console,
        &session_a,
        "/console/rudderstack/event?key=track%3A%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
    )
    .await;
    assert!(event.contains("&lt;img src=x onerror=alert(1)&gt;") && !event.contains(XSS));

    // A POST without the session's token changes nothing; with it, the link is made.
    let link = |csrf: String, session: String| {
        let c = c.clone();
        let url = console.url("/console/rudderstack/link");
        async move {
            c.post(url)
                .header("cookie", session)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_body(&[
                    ("csrf", csrf.as_str()),
                    ("key", &format!("track:{XSS}")),
                    ("template_id", ""),
                    ("name", "On xss"),
                    ("notification", "WELCOME"),
                    ("recipient", "refs.data.userId"),
                ]))
                .send()
                .await
                .unwrap()
        }
    };
    let csrf_a = csrf_in(
        &get(&c, &console, &session_a, "/console/rudderstack")
            .await
            .1,
    );
    let csrf_b = csrf_in(
        &get(&c, &console, &session_b, "/console/rudderstack")
            .await
            .1,
    );
    assert_eq!(
        link("0".repeat(64), session_a.clone()).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        link(csrf_b, session_a.clone()).await.status(),
        StatusCode::FORBIDDEN,
        "B's token is not A's"
    );
    let mappings = mappings_of(&automations, &key_a).await;
    assert!(
        !mappings.to_string().contains("onerror"),
        "refused forms changed nothing: {mappings}"
    );
    assert_eq!(
        link(csrf_a.clone(), session_a.clone()).await.status(),
        StatusCode::SEE_OTHER
    );
    let mappings = mappings_of(&automations, &key_a).await;
    assert!(mappings.to_string().contains("onerror"), "{mappings}");

    // Dead letters of each service answer a page for a signed-in session (the automations API
    // here; the others through the front door in production).
    let (status, html) = get(
        &c,
        &console,
        &session_a,
        "/console/dead-letters/automations",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(
        get(&c, &console, &session_a, "/console/dead-letters/nope")
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Sign-out ends the session server-side.
    let r = c
        .post(console.url("/console/signout"))
        .header("cookie", &session_a)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("csrf", csrf_a.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get(&c, &console, &session_a, "/console/rudderstack")
            .await
            .0,
        StatusCode::SEE_OTHER
    );
}

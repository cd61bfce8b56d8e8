//! The official Courier Node SDK (`@trycourier/courier`, pinned in tests/sdk/package-lock.json)
//! against the front door with `baseURL`: `npm ci` (the npm registry only, into the git-ignored
//! tests/sdk/node_modules), then `node tests/sdk/sdk-test.js`, which checks every answer
//! against the SDK's declared response types. node and npm come from `make deps`.

use std::path::Path;
use std::process::Command;

use rc_tests::frontdoor::FrontDoor;
use rc_tests::{Stack, call};
use reqwest::Method;
use serde_json::json;

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (node and npm are installed by `make deps`)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courier_node_sdk_through_the_front_door() {
    let sdk_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
    // Installs exactly the lockfile's versions (a no-op download when the npm cache has them).
    let npm = tokio::task::spawn_blocking({
        let dir = sdk_dir.clone();
        move || {
            run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
                    .current_dir(dir),
                "npm ci",
            )
        }
    });

    let stack = Stack::start();
    let key = stack.workspace("sdk").await;
    let ingress = stack.ingress().await;
    let profiles = stack.profiles().await;
    let accounts = stack.accounts().await;
    let automations = stack.automations().await;
    let delivery = stack.delivery().await;
    let door = FrontDoor::start(&[
        ("ingress", &ingress),
        ("profiles", &profiles),
        ("accounts", &accounts),
        ("automations", &automations),
        ("delivery", &delivery),
    ]);
    // What the SDK does not cover is set up over our own API, through the same front door.
    for (method, path, body, want) in [
        (
            Method::PUT,
            "/providers/inbox",
            json!({"type": "inbox", "channels": ["inbox", "email"]}),
            200,
        ),
        (
            Method::POST,
            "/notifications/templates",
            json!({"id": "SDK_WELCOME", "name": "Welcome", "published": true,
                "channels": {"inbox": {"title": "Welcome", "body": "Plan {{plan}}"}}}),
            201,
        ),
        (
            Method::POST,
            "/automations/templates",
            json!({"id": "sdk-onboarding", "name": "Onboarding",
                "steps": [{"action": "send", "template": "SDK_WELCOME"}]}),
            201,
        ),
    ] {
        let (s, b) = call(&door, &key, method, path, Some(body)).await;
        assert_eq!(s, want, "{path}: {b}");
    }

    npm.await.expect("npm ci task");
    let base = door.base_url();
    let out = tokio::task::spawn_blocking(move || {
        run(
            Command::new("node")
                .arg("sdk-test.js")
                .env("COURIER_BASE_URL", base)
                .env("COURIER_API_KEY", key)
                .current_dir(sdk_dir),
            "node sdk-test.js",
        )
    })
    .await
    .expect("node task");
    println!("{out}");
    assert!(out.contains("# Courier SDK: all checks passed"), "{out}");
}

//! Load generators: closed loop (N connections, each sends its next request when the last one
//! answered, for a duration), paced (a fixed offered rate, open loop) and burst (as fast as
//! N connections go, for a fixed number of events).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Builds the body of event `i`.
pub type Body = Arc<dyn Fn(u64) -> String + Send + Sync>;

pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .http1_only()
        .build()
        .expect("http client")
}

/// `{"batch":[…]}` of events `i .. i + n`.
pub fn batch_body(body: &Body, i: u64, n: u64) -> String {
    let events: Vec<String> = (i..i + n).map(|k| body(k)).collect();
    format!(r#"{{"batch":[{}]}}"#, events.join(","))
}

pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[idx] as f64 / 1000.0
}

pub struct LoadResult {
    pub events: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub elapsed: f64,
    pub p50: f64,
    pub p99: f64,
}

impl LoadResult {
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed
    }
}

/// Closed loop for `seconds`: `connections` tasks, each with one request in flight, `batch`
/// events per request (1 = a single event body).
pub async fn closed_loop(
    url: &str,
    key: &str,
    connections: usize,
    seconds: u64,
    batch: u64,
    body: Body,
) -> LoadResult {
    let client = client(connections);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let non_2xx = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, stop, counter, non_2xx, errors, body) = (
            client.clone(),
            stop.clone(),
            counter.clone(),
            non_2xx.clone(),
            errors.clone(),
            body.clone(),
        );
        let (url, auth) = (url.to_string(), format!("Bearer {key}"));
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(50_000);
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(batch, Ordering::Relaxed);
                let text = if batch == 1 {
                    body(i)
                } else {
                    batch_body(&body, i, batch)
                };
                let t = Instant::now();
                match post(&client, &url, &auth, text).await {
                    Ok(true) => latencies.push(micros(t.elapsed())),
                    Ok(false) => {
                        non_2xx.fetch_add(1, Ordering::Relaxed);
                        latencies.push(micros(t.elapsed()));
                    }
                    Err(()) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let requests = all.len() as u64;
    let non_2xx = non_2xx.load(Ordering::Relaxed);
    LoadResult {
        events: (requests - non_2xx) * batch,
        non_2xx,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        p50: percentile_ms(&all, 0.50),
        p99: percentile_ms(&all, 0.99),
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// One POST; Ok(2xx?) or Err on a transport error.
async fn post(client: &reqwest::Client, url: &str, auth: &str, body: String) -> Result<bool, ()> {
    let response = client
        .post(url)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|_| ())?;
    let ok = response.status().is_success();
    let _ = response.bytes().await;
    Ok(ok)
}

/// What an open-loop or burst sender did. Events `i` with `accepted[i]` false never entered.
pub struct Sent {
    pub accepted: Vec<bool>,
    pub non_2xx: u64,
    pub errors: u64,
}

/// Offers events `0..n` at `rate` per second, one event per request, whatever the answers'
/// speed (at most `max_in_flight` requests open). `sent_at[i]` gets µs since `base` just before
/// event i's request goes out.
#[allow(clippy::too_many_arguments)]
pub async fn paced(
    url: &str,
    key: &str,
    n: u64,
    rate: f64,
    max_in_flight: usize,
    body: Body,
    base: Instant,
    sent_at: Arc<Vec<AtomicU64>>,
) -> Sent {
    let client = client(max_in_flight);
    let limit = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let auth: Arc<str> = format!("Bearer {key}").into();
    let url: Arc<str> = url.into();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let (client, auth, url, body, sent_at) = (
            client.clone(),
            auth.clone(),
            url.clone(),
            body.clone(),
            sent_at.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let text = body(i);
            sent_at[i as usize].store(micros(base.elapsed()) as u64 + 1, Ordering::Relaxed);
            let r = post(&client, &url, &auth, text).await;
            drop(permit);
            r
        }));
    }
    collect(tasks, 1).await
}

/// Sends events `0..n` in batches of `batch` over `connections` connections as fast as they
/// are answered.
pub async fn burst(
    url: &str,
    key: &str,
    n: u64,
    batch: u64,
    connections: usize,
    body: Body,
) -> Sent {
    let client = client(connections);
    let next = Arc::new(AtomicU64::new(0));
    let auth: Arc<str> = format!("Bearer {key}").into();
    let url: Arc<str> = url.into();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (client, auth, url, body, next) = (
            client.clone(),
            auth.clone(),
            url.clone(),
            body.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(batch, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                let count = batch.min(n - i);
                let r = post(&client, &url, &auth, batch_body(&body, i, count)).await;
                out.push((i, count, r));
            }
        }));
    }
    let mut sent = Sent {
        accepted: vec![false; n as usize],
        non_2xx: 0,
        errors: 0,
    };
    for w in workers {
        for (i, count, r) in w.await.expect("burst worker") {
            record(&mut sent, i, count, r);
        }
    }
    sent
}

fn record(sent: &mut Sent, i: u64, count: u64, r: Result<bool, ()>) {
    match r {
        Ok(true) => {
            for k in i..i + count {
                sent.accepted[k as usize] = true;
            }
        }
        Ok(false) => sent.non_2xx += 1,
        Err(()) => sent.errors += 1,
    }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Result<bool, ()>>>, batch: u64) -> Sent {
    let mut sent = Sent {
        accepted: vec![false; tasks.len() * batch as usize],
        non_2xx: 0,
        errors: 0,
    };
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request task");
        record(&mut sent, i as u64 * batch, batch, r);
    }
    sent
}

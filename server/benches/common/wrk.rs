//! `wrk` on the list endpoint, for the benches that load it (api_load, scale_out): the one
//! way they run it (2 threads, 64 connections, `--latency`, an experiment token) and what
//! they read from its output.
//!
//! Included by path (`#[path = "common/wrk.rs"] mod wrk;`) by the benches that use it, so the
//! others carry none of it as dead code.

use anyhow::Context as _;
use std::time::Duration;

/// Runs `wrk` on `url` with the experiment token, copying its output to stderr as it comes;
/// returns the output.
pub async fn run_wrk(secs: u64, token: &str, url: &str) -> anyhow::Result<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting wrk (scripts/setup --for bench installs it)")?;
    let stdout = child.stdout.take().context("wrk's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut output = String::new();
    while let Some(line) = lines.next_line().await? {
        eprintln!("{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "wrk failed: {status}");
    Ok(output)
}

/// What the report takes from wrk's output.
#[derive(Debug, PartialEq)]
pub struct WrkSummary {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The line `N requests in Xs, Y read`, trimmed.
    pub total: String,
    /// `Non-2xx or 3xx responses` (wrk prints the line only when there were some).
    pub non_2xx: u64,
}

/// A wrk time (`812.00us`, `1.23ms`, `2.00s`, `1.50m`).
fn wrk_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// Parses the output of `wrk --latency`: `Requests/sec:`, the `50%` and `99%` lines of the
/// latency distribution, the `… requests in …` line and `Non-2xx or 3xx responses:`.
pub fn parse_wrk(output: &str) -> anyhow::Result<WrkSummary> {
    let (mut rps, mut p50, mut p99, mut total, mut non_2xx) = (None, None, None, None, 0);
    for line in output.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse::<f64>().ok(),
            (Some("50%"), Some(v)) => p50 = wrk_duration(v),
            (Some("99%"), Some(v)) => p99 = wrk_duration(v),
            _ if line.contains(" requests in ") => total = Some(line.to_string()),
            _ => {
                if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
                    non_2xx = v
                        .trim()
                        .parse()
                        .with_context(|| format!("wrk: bad line {line:?}"))?;
                }
            }
        }
    }
    let missing = |what: &str| anyhow::anyhow!("wrk printed no {what}:\n{output}");
    Ok(WrkSummary {
        requests_per_sec: rps.ok_or_else(|| missing("Requests/sec"))?,
        p50: p50.ok_or_else(|| missing("50% latency"))?,
        p99: p99.ok_or_else(|| missing("99% latency"))?,
        total: total.ok_or_else(|| missing("`requests in` total"))?,
        non_2xx,
    })
}

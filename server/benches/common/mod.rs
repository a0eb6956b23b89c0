//! Helpers shared by the benches (a folder module, so cargo does not take it for a bench).
//! What only some benches use sits in files of its own beside this one (`pods.rs`, `wrk.rs`),
//! included by path by those benches only, so none of them carries dead code.

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Runs `<bin> dev-token <args>` from the workspace root (where bench/run runs the server)
/// and returns the token it prints.
pub fn dev_token(bin: &str, args: &[&str]) -> anyhow::Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let out = std::process::Command::new(bin)
        .arg("dev-token")
        .args(args)
        .current_dir(root)
        .output()
        .with_context(|| format!("running {bin} dev-token"))?;
    anyhow::ensure!(
        out.status.success(),
        "{bin} dev-token {}: {}: {}",
        args.first().copied().unwrap_or_default(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let token = String::from_utf8(out.stdout)
        .context("dev-token printed non-UTF-8")?
        .trim()
        .to_string();
    anyhow::ensure!(!token.is_empty(), "{bin} dev-token printed no token");
    Ok(token)
}

/// At most 2000 characters of an answer, for error messages.
fn clip(text: &str) -> &str {
    text.char_indices()
        .nth(2000)
        .map_or(text, |(end, _)| &text[..end])
}

/// Sends `request`: its JSON answer as `T`, or an error with the status and body unless 2xx.
pub async fn answer<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    what: &str,
) -> anyhow::Result<T> {
    let response = request
        .send()
        .await
        .with_context(|| format!("{what}: no answer"))?;
    decode(response, what).await
}

/// The JSON body of `response` as `T`, or an error with the status and body unless 2xx.
pub async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<T> {
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("{what}: reading the answer"))?;
    anyhow::ensure!(
        status.is_success(),
        "{what} -> HTTP {status}: {}",
        clip(&text)
    );
    serde_json::from_str(&text)
        .with_context(|| format!("{what}: unexpected answer: {}", clip(&text)))
}

/// A user token for the dev admin (`user_dev.local_admin`, an admin while the dev issuer is on).
pub fn admin_token(bin: &str) -> anyhow::Result<String> {
    dev_token(
        bin,
        &[
            "user",
            "--user-id",
            "user_dev.local_admin",
            "--name",
            "Admin",
        ],
    )
}

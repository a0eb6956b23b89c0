//! "Sign in with SLICES": the OpenID Connect relying party (the `openidconnect` crate).
//!
//! The authorization code flow with PKCE (OpenID Connect Core 1.0 §3.1, RFC 7636 S256), a
//! random `state` (CSRF, RFC 6749 §10.12) and `nonce` (Core §3.1.2.1). The provider is found by
//! discovery at `<SLICES_ISSUER>/.well-known/openid-configuration` (read once, again after a
//! failure). The ID token is verified by the crate: signature by the provider's JWKS, `iss`,
//! `aud` (our client id), `exp`, `nonce`; then its `sub` must look like a SLICES user id
//! (`user_…`). The HTTP client follows no redirects (SSRF) and times out after 10 s.

use crate::error::AppError;
use crate::ssr::config::OidcConfig;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The client after discovery: authorization endpoint set; token and user-info endpoints
/// as the provider's metadata says.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How long a started sign-in may take before its callback is refused, seconds.
pub const LOGIN_TTL_SECS: i64 = 600;

/// What a started sign-in must remember until its callback (kept in the server-side session).
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    state: String,
    nonce: String,
    pkce_verifier: String,
    started_at: i64,
    /// The dashboard path to return to.
    pub return_to: String,
}

/// Who signed in, from a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub` (`user_…`).
    pub user_id: String,
    /// `name`, `preferred_username` or `email`, the first present.
    pub display_name: Option<String>,
}

/// The OpenID provider of the site.
pub struct Oidc {
    config: OidcConfig,
    http: openidconnect::reqwest::Client,
    metadata: tokio::sync::OnceCell<CoreProviderMetadata>,
}

impl Oidc {
    /// A client for `config`; nothing is fetched yet.
    pub fn new(config: OidcConfig) -> anyhow::Result<Self> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            config,
            http,
            metadata: tokio::sync::OnceCell::new(),
        })
    }

    async fn metadata(&self) -> Result<&CoreProviderMetadata, AppError> {
        self.metadata
            .get_or_try_init(|| async {
                let issuer = IssuerUrl::new(self.config.issuer.clone())
                    .map_err(|e| AppError::Unavailable(format!("SLICES_ISSUER: {e}")))?;
                CoreProviderMetadata::discover_async(issuer, &self.http)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, issuer = %self.config.issuer, "OpenID discovery failed");
                        AppError::Unavailable(format!(
                            "the sign-in provider ({}) cannot be reached; try again shortly or paste your tokens",
                            self.config.issuer
                        ))
                    })
            })
            .await
    }

    /// The client as discovery describes the provider (built per sign-in: cheap).
    async fn client(&self) -> Result<Client, AppError> {
        let metadata = self.metadata().await?.clone();
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.0.clone())),
        )
        .set_redirect_uri(redirect_url(&self.config)?))
    }

    /// Where to send the browser to sign in, and what to remember for the callback.
    pub async fn begin(&self, return_to: &str) -> Result<(String, PendingLogin), AppError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            started_at: chrono::Utc::now().timestamp(),
            return_to: return_to.to_string(),
        };
        Ok((url.to_string(), pending))
    }

    /// Completes a sign-in: checks `state` against the pending one, redeems `code` with the
    /// PKCE verifier, verifies the ID token (signature, `iss`, `aud`, `exp`, `nonce`). 401
    /// with the reason when anything does not match; 503 when the provider cannot be reached.
    pub async fn finish(
        &self,
        pending: PendingLogin,
        state: &str,
        code: &str,
    ) -> Result<Identity, AppError> {
        use subtle::ConstantTimeEq as _;
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
            return Err(AppError::Unauthenticated(
                "the sign-in answer does not belong to the sign-in this browser started (state mismatch); sign in again".into(),
            ));
        }
        if chrono::Utc::now().timestamp() - pending.started_at > LOGIN_TTL_SECS {
            return Err(AppError::Unauthenticated(
                "the sign-in took too long; sign in again".into(),
            ));
        }
        let client = self.client().await?;
        let exchange = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| {
                AppError::Unavailable(format!("the sign-in provider has no token endpoint: {e}"))
            })?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier));
        let tokens = exchange.request_async(&self.http).await.map_err(|e| {
            AppError::Unauthenticated(format!(
                "the sign-in provider refused the authorization code (used already, or expired): {e}"
            ))
        })?;
        let id_token = tokens.id_token().ok_or_else(|| {
            AppError::Unauthenticated("the sign-in provider sent no ID token".into())
        })?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(pending.nonce))
            .map_err(|e| AppError::Unauthenticated(format!("the ID token is not valid: {e}")))?;
        let user_id = claims.subject().as_str().to_string();
        if !user_id.starts_with("user_") {
            return Err(AppError::Unauthenticated(format!(
                "the ID token's subject `{}` is not a SLICES user id (`user_…`)",
                user_id.chars().take(80).collect::<String>()
            )));
        }
        let display_name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string())
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_string()))
            .or_else(|| claims.email().map(|e| e.as_str().to_string()));
        Ok(Identity {
            user_id,
            display_name,
        })
    }
}

fn redirect_url(config: &OidcConfig) -> Result<RedirectUrl, AppError> {
    RedirectUrl::new(config.redirect_url.clone())
        .map_err(|e| AppError::Unavailable(format!("OIDC_REDIRECT_URL: {e}")))
}

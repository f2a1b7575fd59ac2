//! Authentication and topic authorization.
//!
//! A client presents a JWT (`Authorization: Bearer <jwt>`, or `?token=<jwt>` for
//! browsers, which cannot set headers on WebSocket or EventSource; the query form may
//! reach proxy logs). The algorithm is pinned by configuration (HS256 with a shared
//! secret, RS256/ES256 with a public key), so `alg: none` and algorithm confusion are
//! refused; `exp` and `sub` are required, `nbf` is checked with a small leeway, and a
//! configured `auth.audience` / `auth.issuer` makes `aud` / `iss` required too (a token
//! without the claim is refused, not waved through).
//!
//! Authentication is on as soon as it is configured: `auth.algorithm`, or a secret alone
//! (HS256). Settings that configure it without saying how tokens are checked (a public
//! key without its algorithm, an audience without a key) refuse to start
//! ([`AuthConfig::algorithm_in_use`]); they never leave it silently off.
//!
//! The policy maps claims to allowed topic patterns: each rule applies to everyone or
//! to one role, and lists templates like `user:{sub}` or `provider:{sub}`, `attendance`,
//! `court_rep:*`, `*`. Claim values are substituted literally (a `*` inside a claim
//! never becomes a wildcard). Anything not allowed is denied. Topics are checked when
//! subscribed and again when the token is refreshed, never per event.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Authentication settings (`[auth]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256`, `RS256` or `ES256`. Unset: HS256 when `secret` or `secret_file` is set,
    /// authentication off when nothing of `[auth]` is set, and an error otherwise (see
    /// [`AuthConfig::algorithm_in_use`]).
    pub algorithm: Option<String>,
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// File holding the HS256 shared secret (instead of `secret`).
    pub secret_file: Option<PathBuf>,
    /// PEM public key for RS256/ES256.
    pub public_key_file: Option<PathBuf>,
    /// If set, every token must carry this `aud` (a token without `aud` is refused).
    pub audience: Option<String>,
    /// If set, every token must carry this `iss` (a token without `iss` is refused).
    pub issuer: Option<String>,
    /// Clock leeway for `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim holding the role (a string or an array of strings).
    pub role_claim: String,
    /// Policy rules; when empty: role `admin` may subscribe to anything, everyone to
    /// `user:{sub}`.
    pub allow: Vec<Rule>,
    /// The role whose tokens may read `/readyz`, `/metrics` and `/api/stats` on the
    /// public listener (when no `metrics_listen` address serves them instead).
    pub operator_role: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: None,
            secret: None,
            secret_file: None,
            public_key_file: None,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(30),
            role_claim: "role".into(),
            allow: Vec::new(),
            operator_role: "admin".into(),
        }
    }
}

impl AuthConfig {
    /// The algorithm tokens are checked with, or `None` when authentication is off.
    ///
    /// - `algorithm` set: that one (`HS256`, `RS256`, `ES256`); key settings the
    ///   algorithm does not use (a secret with RS256, a public key with HS256) are an
    ///   error, so a configuration never says one thing and does another.
    /// - `algorithm` unset and `secret` or `secret_file` set: HS256.
    /// - `algorithm` unset and `public_key_file` set: an error (the key alone does not say
    ///   whether it is for RS256 or ES256).
    /// - nothing of the above, but `audience`, `issuer` or `allow` set: an error (they
    ///   would be ignored with authentication off).
    /// - nothing at all: `None`, authentication is off.
    pub fn algorithm_in_use(&self) -> Result<Option<Algorithm>, AuthConfigError> {
        let has_secret = self.secret.is_some() || self.secret_file.is_some();
        let has_public_key = self.public_key_file.is_some();
        let Some(name) = self.algorithm.as_deref() else {
            if has_public_key {
                return Err(AuthConfigError::Incomplete(
                    "auth.public_key_file is set but auth.algorithm is not: set auth.algorithm = \"RS256\" or \"ES256\" (the key alone does not say which)".into(),
                ));
            }
            if has_secret {
                return Ok(Some(Algorithm::HS256));
            }
            let set: Vec<&str> = [
                ("auth.audience", self.audience.is_some()),
                ("auth.issuer", self.issuer.is_some()),
                ("auth.allow", !self.allow.is_empty()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !set.is_empty() {
                return Err(AuthConfigError::Incomplete(format!(
                    "{} set but no key is: set auth.secret (HS256), or auth.algorithm and auth.public_key_file (RS256, ES256); without a key authentication would be off",
                    if set.len() == 1 {
                        format!("{} is", set[0])
                    } else {
                        format!("{} are", set.join(", "))
                    }
                )));
            }
            return Ok(None);
        };
        let algorithm = match name.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(AuthConfigError::Algorithm(other.to_string())),
        };
        if algorithm == Algorithm::HS256 && has_public_key {
            return Err(AuthConfigError::Incomplete(
                "auth.public_key_file is set but auth.algorithm is HS256, which does not use it: remove one of them".into(),
            ));
        }
        if algorithm != Algorithm::HS256 && has_secret {
            return Err(AuthConfigError::Incomplete(format!(
                "auth.secret or auth.secret_file is set but auth.algorithm is {algorithm:?}, which does not use it: remove one of them"
            )));
        }
        Ok(Some(algorithm))
    }
}

/// One policy rule: topics allowed to everyone, or to one role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The role this rule applies to; unset means every authenticated client.
    #[serde(default)]
    pub role: Option<String>,
    /// Topic templates: `{claim}` is replaced by the claim's value; a trailing `*`
    /// matches any rest; `*` alone matches every topic.
    pub topics: Vec<String>,
}

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The algorithm is not one of HS256, RS256, ES256.
    #[error("auth.algorithm {0:?} is not supported: use HS256, RS256 or ES256")]
    Algorithm(String),
    /// A key or secret is missing or unreadable.
    #[error("auth: {0}")]
    Key(String),
    /// Authentication is configured in part: what is there does not say how to check
    /// tokens, or contradicts the algorithm.
    #[error("auth: {0}")]
    Incomplete(String),
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("a token is required: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token is not valid yet (`nbf`).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Wrong audience or issuer.
    #[error("the token is for another audience or issuer")]
    WrongAudience,
    /// The token lacks a claim this server requires (`aud` or `iss`, when configured).
    #[error("the token has no {0} claim, and this server requires one")]
    MissingClaim(&'static str),
    /// Signed with another algorithm than the configured one (including `none`).
    #[error("the token's algorithm is not the one this server accepts")]
    Algorithm,
    /// Bad signature or malformed token.
    #[error("the token is invalid")]
    Invalid,
    /// The token has no usable `sub`.
    #[error("the token has no subject (sub)")]
    NoSubject,
}

/// What a topic pattern matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(t) => t == topic,
            Pattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// An authenticated client: who it is, until when, and what it may subscribe to.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Subject (`sub`), or `anonymous` without authentication.
    pub sub: String,
    /// Expiry (`exp`, Unix seconds), if the token has one.
    pub exp: Option<i64>,
    allowed: Vec<Pattern>,
}

impl Principal {
    /// The principal of a server without authentication: everything is allowed.
    pub(crate) fn anonymous() -> Principal {
        Principal {
            sub: "anonymous".into(),
            exp: None,
            allowed: vec![Pattern::Any],
        }
    }

    /// Whether this principal may subscribe to `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        self.allowed.iter().any(|p| p.matches(topic))
    }

    /// Time left until expiry.
    pub fn expires_in(&self) -> Option<Duration> {
        let exp = self.exp?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Some(Duration::from_secs((exp - now).max(0) as u64))
    }
}

/// A verifier built from [`AuthConfig`].
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    rules: Vec<Rule>,
    role_claim: String,
    operator_role: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("algorithms", &self.validation.algorithms)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds the verifier, or `None` when authentication is off.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Auth>, AuthConfigError> {
        let Some(algorithm) = config.algorithm_in_use()? else {
            return Ok(None);
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|err| {
                AuthConfigError::Key(format!("cannot read {}: {err}", path.display()))
            })
        };
        let key = match algorithm {
            Algorithm::HS256 => {
                let secret = match (&config.secret, &config.secret_file) {
                    (Some(secret), _) => secret.as_bytes().to_vec(),
                    (None, Some(path)) => {
                        let mut bytes = read(path)?;
                        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                            bytes.pop();
                        }
                        bytes
                    }
                    (None, None) => {
                        return Err(AuthConfigError::Key(
                            "HS256 needs auth.secret or auth.secret_file".into(),
                        ));
                    }
                };
                check_secret_length(&secret)?;
                DecodingKey::from_secret(&secret)
            }
            alg => {
                let path = config.public_key_file.as_ref().ok_or_else(|| {
                    AuthConfigError::Key(format!("{alg:?} needs auth.public_key_file"))
                })?;
                let pem = read(path)?;
                let parsed = if alg == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                parsed.map_err(|err| {
                    AuthConfigError::Key(format!(
                        "{} is not a {alg:?} public key: {err}",
                        path.display()
                    ))
                })?
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured audience or issuer is a requirement: jsonwebtoken checks `aud` and
        // `iss` only when the token has them, unless they are required claims.
        let mut required = vec!["exp", "sub"];
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let rules = if config.allow.is_empty() {
            vec![
                Rule {
                    role: Some("admin".into()),
                    topics: vec!["*".into()],
                },
                Rule {
                    role: None,
                    topics: vec!["user:{sub}".into()],
                },
            ]
        } else {
            config.allow.clone()
        };
        Ok(Some(Auth {
            key,
            validation,
            rules,
            role_claim: config.role_claim.clone(),
            operator_role: config.operator_role.clone(),
        }))
    }

    /// Verifies a token and computes what its bearer may subscribe to.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let (claims, roles) = self.decode(token)?;
        let sub = claim_text(claims.get("sub")).ok_or(AuthError::NoSubject)?;
        let exp = claims.get("exp").and_then(Value::as_i64);
        let mut allowed = Vec::new();
        for rule in &self.rules {
            if let Some(role) = &rule.role
                && !roles.contains(role)
            {
                continue;
            }
            for template in &rule.topics {
                if let Some(pattern) = expand(template, &claims) {
                    allowed.push(pattern);
                }
            }
        }
        Ok(Principal { sub, exp, allowed })
    }

    /// The role whose tokens may read the operator endpoints (`auth.operator_role`).
    pub(crate) fn operator_role(&self) -> &str {
        &self.operator_role
    }

    /// Verifies a token and says whether it carries the operator role
    /// (`auth.operator_role`), which may read the operator endpoints.
    pub(crate) fn is_operator(&self, token: &str) -> Result<bool, AuthError> {
        let (claims, roles) = self.decode(token)?;
        claim_text(claims.get("sub")).ok_or(AuthError::NoSubject)?;
        Ok(roles.contains(&self.operator_role))
    }

    /// Checks a token's signature and claims; returns its claims and roles.
    fn decode(&self, token: &str) -> Result<(Map<String, Value>, Vec<String>), AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|err| match err.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => AuthError::WrongAudience,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::Algorithm,
            ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => AuthError::NoSubject,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                AuthError::MissingClaim("aud")
            }
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                AuthError::MissingClaim("iss")
            }
            _ => AuthError::Invalid,
        })?;
        let claims = data.claims;
        let roles: Vec<String> = match claims.get(&self.role_claim) {
            Some(Value::String(role)) => vec![role.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Ok((claims, roles))
    }
}

/// A claim's value as text: strings as they are, integers in decimal.
fn claim_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Expands `{claim}` placeholders literally; `None` if a claim is missing.
fn expand(template: &str, claims: &Map<String, Value>) -> Option<Pattern> {
    if template == "*" {
        return Some(Pattern::Any);
    }
    let (body, wildcard) = match template.strip_suffix('*') {
        Some(body) => (body, true),
        None => (template, false),
    };
    let mut out = String::with_capacity(body.len() + 16);
    let mut rest = body;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let value = claim_text(claims.get(&rest[start + 1..end]))?;
        if value.chars().any(|c| c.is_whitespace() || c == ',') {
            return None;
        }
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(if wildcard {
        Pattern::Prefix(out)
    } else {
        Pattern::Exact(out)
    })
}

/// Shortest HS256 secret accepted, in bytes: as long as the SHA-256 output (RFC 7518,
/// section 3.2), so the secret is no easier to guess than the signature.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// Refuses an HS256 secret shorter than [`MIN_SECRET_BYTES`].
fn check_secret_length(secret: &[u8]) -> Result<(), AuthConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError::Key(format!(
            "the HS256 secret (auth.secret or auth.secret_file) is {} bytes; it must be at least {MIN_SECRET_BYTES} (generate one with `openssl rand -base64 32`)",
            secret.len()
        )));
    }
    Ok(())
}

/// Signs a development token with the configured HS256 secret (`rowcast token`).
pub fn dev_token(
    config: &AuthConfig,
    sub: &str,
    role: Option<&str>,
    ttl_secs: u64,
) -> Result<String, AuthConfigError> {
    if config.algorithm_in_use()? != Some(Algorithm::HS256) {
        return Err(AuthConfigError::Key(
            "rowcast token signs with auth.secret: configure auth.secret (HS256) (tokens for RS256/ES256 come from your identity provider)".into(),
        ));
    }
    let secret = match (&config.secret, &config.secret_file) {
        (Some(secret), _) => secret.clone().into_bytes(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|err| AuthConfigError::Key(format!("cannot read {}: {err}", path.display())))?
            .trim_end()
            .as_bytes()
            .to_vec(),
        (None, None) => {
            return Err(AuthConfigError::Key(
                "HS256 needs auth.secret or auth.secret_file".into(),
            ));
        }
    };
    check_secret_length(&secret)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + ttl_secs});
    if let Some(role) = role {
        claims[&config.role_claim] = Value::String(role.to_string());
    }
    if let Some(aud) = &config.audience {
        claims["aud"] = Value::String(aud.clone());
    }
    if let Some(iss) = &config.issuer {
        claims["iss"] = Value::String(iss.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .map_err(|err| AuthConfigError::Key(format!("cannot sign: {err}")))
}

/// The token a request carries: the `Authorization: Bearer` header, else `?token=`.
pub(crate) fn token_of<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(query_token)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-enough-length-for-hs256";

    fn auth(rules: Vec<Rule>) -> Auth {
        Auth::from_config(&AuthConfig {
            algorithm: Some("HS256".into()),
            secret: Some(SECRET.into()),
            allow: rules,
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap()
    }

    fn token(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn future() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 3600
    }

    #[test]
    fn default_policy_gives_users_their_topic_and_admins_everything() {
        let auth = auth(vec![]);
        let user = auth
            .verify(&token(json!({"sub": "7", "exp": future()})))
            .unwrap();
        assert!(user.allows("user:7"));
        assert!(!user.allows("user:8"));
        assert!(!user.allows("bookings"));
        let admin = auth
            .verify(&token(
                json!({"sub": "1", "role": "admin", "exp": future()}),
            ))
            .unwrap();
        assert!(admin.allows("bookings") && admin.allows("user:8"));
    }

    #[test]
    fn role_rules_expand_claims_and_arrays_of_roles_count() {
        let auth = auth(vec![
            Rule {
                role: Some("court_rep".into()),
                topics: vec!["court_rep:{sub}".into(), "attendance".into()],
            },
            Rule {
                role: Some("provider".into()),
                topics: vec!["provider:{sub}".into(), "organization:{org}".into()],
            },
        ]);
        let rep = auth
            .verify(&token(
                json!({"sub": "5", "org": 12, "role": ["court_rep"], "exp": future()}),
            ))
            .unwrap();
        assert!(rep.allows("court_rep:5") && rep.allows("attendance"));
        assert!(!rep.allows("court_rep:6") && !rep.allows("provider:5"));
        // A rule whose claim is missing grants nothing of that template.
        let provider = auth
            .verify(&token(
                json!({"sub": "3", "role": "provider", "exp": future()}),
            ))
            .unwrap();
        assert!(provider.allows("provider:3"));
        assert!(!provider.allows("organization:"));
    }

    #[test]
    fn a_star_inside_a_claim_is_not_a_wildcard() {
        let auth = auth(vec![Rule {
            role: None,
            topics: vec!["user:{sub}".into(), "team:{team}*".into()],
        }]);
        let p = auth
            .verify(&token(json!({"sub": "*", "team": "4", "exp": future()})))
            .unwrap();
        assert!(p.allows("user:*"));
        assert!(!p.allows("user:7"));
        assert!(p.allows("team:4") && p.allows("team:42"));
    }

    #[test]
    fn tokens_without_exp_or_sub_are_refused() {
        let auth = auth(vec![]);
        assert_eq!(
            auth.verify(&token(json!({"sub": "7"}))).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(
            auth.verify(&token(json!({"exp": future()}))).unwrap_err(),
            AuthError::NoSubject
        );
        assert_eq!(auth.verify("garbage").unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn a_dev_token_verifies_with_the_same_config() {
        let config = AuthConfig {
            algorithm: Some("HS256".into()),
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        let token = dev_token(&config, "9", Some("admin"), 60).unwrap();
        let principal = Auth::from_config(&config)
            .unwrap()
            .unwrap()
            .verify(&token)
            .unwrap();
        assert_eq!(principal.sub, "9");
        assert!(principal.allows("anything"));
    }

    #[test]
    fn a_short_secret_is_a_configuration_error() {
        let err = Auth::from_config(&AuthConfig {
            algorithm: Some("HS256".into()),
            secret: Some("short".into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("at least 32"));
        let of_length = |n: usize| {
            Auth::from_config(&AuthConfig {
                secret: Some("s".repeat(n)),
                ..AuthConfig::default()
            })
            .map(|_| ())
        };
        assert!(of_length(MIN_SECRET_BYTES - 1).is_err());
        assert!(of_length(MIN_SECRET_BYTES).is_ok());
        assert!(
            Auth::from_config(&AuthConfig {
                algorithm: Some("none".into()),
                ..AuthConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn a_configured_audience_and_issuer_are_required_claims() {
        let auth = Auth::from_config(&AuthConfig {
            algorithm: Some("HS256".into()),
            secret: Some(SECRET.into()),
            audience: Some("dashboards".into()),
            issuer: Some("https://auth.example".into()),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap();
        let full = json!({"sub": "7", "exp": future(), "aud": "dashboards", "iss": "https://auth.example"});
        assert!(auth.verify(&token(full.clone())).is_ok());
        let mut no_aud = full.clone();
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            auth.verify(&token(no_aud)).unwrap_err(),
            AuthError::MissingClaim("aud")
        );
        let mut no_iss = full.clone();
        no_iss.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            auth.verify(&token(no_iss)).unwrap_err(),
            AuthError::MissingClaim("iss")
        );
        let mut other = full;
        other["aud"] = json!("billing");
        assert_eq!(
            auth.verify(&token(other)).unwrap_err(),
            AuthError::WrongAudience
        );
    }

    #[test]
    fn without_a_configured_audience_tokens_need_no_aud() {
        let auth = auth(vec![]);
        assert!(
            auth.verify(&token(json!({"sub": "7", "exp": future()})))
                .is_ok()
        );
    }

    #[test]
    fn a_secret_alone_turns_hs256_on() {
        let config = AuthConfig {
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        assert_eq!(config.algorithm_in_use().unwrap(), Some(Algorithm::HS256));
        let auth = Auth::from_config(&config).unwrap().expect("auth is on");
        assert!(
            auth.verify(&token(json!({"sub": "7", "exp": future()})))
                .is_ok()
        );
        assert_eq!(auth.verify("garbage").unwrap_err(), AuthError::Invalid);
        // The development token signer agrees.
        assert!(dev_token(&config, "1", None, 60).is_ok());
        // A short secret without an algorithm is refused like one with it.
        let short = AuthConfig {
            secret: Some("short".into()),
            ..AuthConfig::default()
        };
        assert!(
            Auth::from_config(&short)
                .unwrap_err()
                .to_string()
                .contains("at least 32")
        );
    }

    #[test]
    fn a_public_key_without_an_algorithm_refuses_to_start_and_says_what_is_missing() {
        let config = AuthConfig {
            public_key_file: Some("/etc/rowcast/jwt.pub.pem".into()),
            ..AuthConfig::default()
        };
        let err = Auth::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("auth.algorithm"), "{err}");
        assert!(err.contains("RS256") && err.contains("ES256"), "{err}");
    }

    #[test]
    fn claim_checks_without_a_key_refuse_to_start_instead_of_leaving_auth_off() {
        let config = AuthConfig {
            audience: Some("dashboards".into()),
            issuer: Some("https://auth.example".into()),
            ..AuthConfig::default()
        };
        let err = Auth::from_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("auth.audience, auth.issuer are set but no key is"),
            "{err}"
        );
        assert!(err.contains("auth.secret"), "{err}");
        // Nothing configured at all: off, as documented.
        assert!(Auth::from_config(&AuthConfig::default()).unwrap().is_none());
    }

    #[test]
    fn key_settings_the_algorithm_does_not_use_are_refused() {
        let rs_with_secret = AuthConfig {
            algorithm: Some("RS256".into()),
            public_key_file: Some("/k.pem".into()),
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        let err = rs_with_secret.algorithm_in_use().unwrap_err().to_string();
        assert!(err.contains("RS256"), "{err}");
        let hs_with_key = AuthConfig {
            algorithm: Some("hs256".into()),
            secret: Some(SECRET.into()),
            public_key_file: Some("/k.pem".into()),
            ..AuthConfig::default()
        };
        let err = hs_with_key.algorithm_in_use().unwrap_err().to_string();
        assert!(err.contains("public_key_file"), "{err}");
        let both = AuthConfig {
            secret: Some(SECRET.into()),
            public_key_file: Some("/k.pem".into()),
            ..AuthConfig::default()
        };
        assert!(both.algorithm_in_use().is_err());
    }

    #[test]
    fn only_tokens_with_the_operator_role_are_operators() {
        let auth = auth(vec![]);
        let admin = token(json!({"sub": "1", "role": ["viewer", "admin"], "exp": future()}));
        let user = token(json!({"sub": "7", "exp": future()}));
        assert!(auth.is_operator(&admin).unwrap());
        assert!(!auth.is_operator(&user).unwrap());
        assert_eq!(auth.is_operator("garbage").unwrap_err(), AuthError::Invalid);
        let ops = Auth::from_config(&AuthConfig {
            secret: Some(SECRET.into()),
            operator_role: "ops".into(),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap();
        assert!(!ops.is_operator(&admin).unwrap());
        let op = token(json!({"sub": "2", "role": "ops", "exp": future()}));
        assert!(ops.is_operator(&op).unwrap());
    }
}

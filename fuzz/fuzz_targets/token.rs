//! Tokens against `Auth::verify` with an HS256 configuration.
//!
//! The first byte picks the mode:
//!
//! - even: the rest, as UTF-8, is the token as a client would send it. Forging an
//!   HMAC is out of reach of a fuzzer, so `verify` must refuse it unless its signature
//!   is, by an independent HMAC-SHA256 check, really made with the secret.
//! - odd: the rest is `header JSON` NUL `claims JSON` (arbitrary bytes, not
//!   necessarily JSON), signed with the secret. This reaches the claim handling
//!   behind the signature (subject, expiry, roles, policy templates). An accepted
//!   token must have an HS256 header, a subject and an expiry; its principal's
//!   subject is the `sub` claim, and what it may subscribe to follows the policy
//!   below (claim values are never wildcards).
//!
//! Invariants in both modes: nothing panics, and `verify` gives the same answer twice.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use rowcast::serve::auth::{Auth, AuthConfig, Principal, Rule};
use serde_json::Value;
use sha2::Sha256;
use std::sync::OnceLock;

const SECRET: &[u8] = b"fuzz-secret-of-enough-length-for-hs256";

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        Auth::from_config(&AuthConfig {
            algorithm: Some("HS256".into()),
            secret: Some(String::from_utf8(SECRET.to_vec()).unwrap()),
            allow: vec![
                Rule {
                    role: Some("admin".into()),
                    topics: vec!["*".into()],
                },
                Rule {
                    role: None,
                    topics: vec!["user:{sub}".into(), "team:{team}*".into()],
                },
            ],
            ..AuthConfig::default()
        })
        .expect("valid configuration")
        .expect("authentication is on")
    })
}

fn mac() -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(SECRET).expect("HMAC takes any key length")
}

/// Whether `token` is `header.payload.signature` with an HMAC-SHA256 of the secret.
fn signed_with_secret(token: &str) -> bool {
    let Some((signed, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let mut mac = mac();
    mac.update(signed.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = mac();
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

fn verify(token: &str) -> Option<Principal> {
    let first = auth().verify(token);
    let second = auth().verify(token);
    match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!((&a.sub, a.exp), (&b.sub, b.exp));
            Some(a)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "verify is deterministic");
            None
        }
        (a, b) => panic!("verify answered {a:?} then {b:?}"),
    }
}

/// A claim's value as the policy substitutes it: strings as they are, integers in
/// decimal, nothing else.
fn claim_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn check_principal(header: &[u8], claims: &[u8], principal: &Principal) {
    let header: Value = serde_json::from_slice(header).expect("an accepted header is JSON");
    assert_eq!(header["alg"], "HS256", "accepted header {header}");
    let claims: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
    let claims = claims.as_object().expect("accepted claims are an object");
    assert!(
        claims.contains_key("exp"),
        "accepted without exp: {claims:?}"
    );
    let sub = claim_text(claims.get("sub")).expect("accepted without a usable sub");
    assert_eq!(principal.sub, sub);
    assert_eq!(principal.exp, claims["exp"].as_i64());
    let _ = principal.expires_in();

    let admin = match claims.get("role") {
        Some(Value::String(role)) => role == "admin",
        Some(Value::Array(roles)) => roles.iter().any(|r| r == "admin"),
        _ => false,
    };
    if admin {
        assert!(principal.allows("anything"));
        return;
    }
    // Not an admin: exactly `user:{sub}` and `team:{team}*`, claims taken literally.
    let usable = |v: &str| !v.chars().any(|c| c.is_whitespace() || c == ',');
    assert_eq!(principal.allows(&format!("user:{sub}")), usable(&sub));
    assert!(!principal.allows(&format!("user:{sub}x")));
    assert!(!principal.allows("bookings"));
    match claim_text(claims.get("team")) {
        Some(team) if usable(&team) => {
            assert!(principal.allows(&format!("team:{team}")));
            assert!(principal.allows(&format!("team:{team}-any-rest")));
        }
        _ => assert!(!principal.allows("team:")),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        if verify(token).is_some() {
            assert!(
                signed_with_secret(token),
                "accepted a token not signed with the secret: {token:?}"
            );
        }
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        let token = sign(header, claims);
        assert!(signed_with_secret(&token));
        if let Some(principal) = verify(&token) {
            check_principal(header, claims, &principal);
        }
    }
});

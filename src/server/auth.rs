//! Who may connect, under which name (`--auth token`): JWT verification and what a token grants.
//!
//! The backend signs a token per user; the daemon verifies it without calling anyone back. The
//! algorithm is pinned by configuration (`--token-alg`), never read from the token: a token whose
//! header names another algorithm (`none`, or HS256 signed with an RSA public key as its "secret")
//! is refused before any key is tried. Several keys may be configured at once (rotation): a token
//! is accepted when one of them verifies it.
//!
//! Claims read (besides `exp`, `nbf`, `iss`, `aud`, checked by `jsonwebtoken`):
//!
//! | claim | meaning |
//! |---|---|
//! | `name` or `sub` | the name in rooms (`name` wins); cleaned like a path segment; empty is refused |
//! | `rooms` | list of room names and `prefix*` patterns (`*` alone: every room); absent: none |
//! | `history` | `true`: the HTTP history views (`/messages`, `/rooms`, and `/rooms/{room}/messages` for a granted room) |
//!
//! Tokens are secrets: nothing here logs one, and [`Verifier`]'s `Debug` shows no key.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::handshake::Request;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as long as the hash (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Verifies connection tokens with the configured algorithm and keys.
pub struct Verifier {
    alg: Algorithm,
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({:?}, {} keys)", self.alg, self.keys.len())
    }
}

/// Why a token was not accepted (all answered 401; the reason goes to the debug log only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No token in the query, `Authorization` or `Sec-WebSocket-Protocol`.
    Missing,
    /// `exp` has passed (with [`LEEWAY_SECS`]).
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// No configured key verifies the signature.
    BadSignature,
    /// The header names another algorithm than `--token-alg` (or `none`).
    WrongAlgorithm,
    /// `iss` or `aud` is not the configured one.
    WrongIssuerOrAudience,
    /// Not a JWT, or claims of the wrong shape, or no usable name.
    Malformed,
}

/// The claims Wisp reads.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    name: Option<String>,
    exp: u64,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    history: bool,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The name in rooms, cleaned as a path segment would be.
    pub name: String,
    /// Room names and `prefix*` patterns.
    pub rooms: Vec<String>,
    /// May read the HTTP history views.
    pub history: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Grant {
    /// Whether the token grants room `room` (a cleaned room name).
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => p == room,
        })
    }
}

impl Verifier {
    /// Builds a verifier for `alg` (`HS256`, `RS256`, `ES256`, `EdDSA`) from HMAC secrets (for
    /// HS256) or PEM public keys (the others). Errors name what is wrong, for a one-line exit.
    pub fn new(
        alg: &str,
        secrets: &[Vec<u8>],
        public_keys: &[Vec<u8>],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Verifier, String> {
        let alg = match Algorithm::from_str(alg) {
            Ok(a @ (Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA)) => {
                a
            }
            _ => {
                return Err(format!(
                    "--token-alg {alg}: expected HS256, RS256, ES256 or EdDSA"
                ))
            }
        };
        let keys = if alg == Algorithm::HS256 {
            if !public_keys.is_empty() {
                return Err("--token-public-key: HS256 verifies with --token-secret-file".into());
            }
            if secrets.is_empty() {
                return Err("--auth token with HS256 needs --token-secret-file".into());
            }
            secrets
                .iter()
                .map(|s| {
                    if s.len() < MIN_SECRET_BYTES {
                        return Err(format!(
                            "--token-secret-file: the secret is {} bytes, at least {MIN_SECRET_BYTES} are needed",
                            s.len()
                        ));
                    }
                    DecodingKey::from_secret(s).map_err(|e| format!("--token-secret-file: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            if !secrets.is_empty() {
                return Err(format!(
                    "--token-secret-file: {alg:?} verifies with --token-public-key"
                ));
            }
            if public_keys.is_empty() {
                return Err(format!(
                    "--auth token with {alg:?} needs --token-public-key"
                ));
            }
            public_keys
                .iter()
                .map(|pem| {
                    match alg {
                        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
                        _ => DecodingKey::from_ed_pem(pem),
                    }
                    .map_err(|e| {
                        format!("--token-public-key: not a {alg:?} public key in PEM: {e}")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = audience.is_some();
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Verifier {
            alg,
            keys,
            validation,
        })
    }

    /// Verifies `token` and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, Rejected> {
        let mut last = Rejected::BadSignature;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return grant(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => Rejected::BadSignature,
                        ErrorKind::ExpiredSignature => Rejected::Expired,
                        ErrorKind::ImmatureSignature => Rejected::NotYetValid,
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                            Rejected::WrongAlgorithm
                        }
                        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                            Rejected::WrongIssuerOrAudience
                        }
                        _ => Rejected::Malformed,
                    };
                    // Only a bad signature is worth trying the next key for: anything else was
                    // decided before or after the signature, the same way for every key.
                    if last != Rejected::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn grant(c: Claims) -> Result<Grant, Rejected> {
    let raw = c.name.or(c.sub).ok_or(Rejected::Malformed)?;
    let name = crate::chat::sanitize_name(&raw, "");
    if name.is_empty() {
        return Err(Rejected::Malformed);
    }
    Ok(Grant {
        name,
        rooms: c.rooms,
        history: c.history,
        exp: c.exp,
    })
}

/// Mints an HS256 token for `wisp token`: `sub`, `rooms`, `history`, `iat`, `exp` = now + `ttl`.
pub fn mint(
    secret: &[u8],
    sub: &str,
    rooms: &[String],
    history: bool,
    ttl_secs: u64,
) -> Result<String, String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "--secret-file: the secret is {} bytes, at least {MIN_SECRET_BYTES} are needed",
            secret.len()
        ));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": sub,
        "rooms": rooms,
        "history": history,
        "iat": now,
        "exp": now + ttl_secs,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| e.to_string())
}

/// Where the token of a request was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier<'r> {
    /// `?token=` in the target.
    Query,
    /// `Authorization: Bearer`.
    Bearer,
    /// One of the `Sec-WebSocket-Protocol` values; carries the value the 101 must echo (another
    /// offered value when there is one, e.g. `wisp`, else the token's own).
    Subprotocol(&'r str),
}

/// The token a request carries: `?token=`, then `Authorization: Bearer`, then a
/// `Sec-WebSocket-Protocol` value that looks like a JWT (three dot-separated parts).
pub fn token_of<'r>(req: &'r Request<'_>) -> Option<(std::borrow::Cow<'r, str>, Carrier<'r>)> {
    if let Some(t) = req
        .query()
        .and_then(|q| crate::http::query_param(q, "token"))
        .filter(|t| !t.is_empty())
    {
        return Some((crate::http::percent_decode(t), Carrier::Query));
    }
    if let Some(t) = req.authorization.and_then(bearer) {
        return Some((t.into(), Carrier::Bearer));
    }
    let offered = req.protocols?;
    let mut values = offered.split(',').map(str::trim).filter(|v| !v.is_empty());
    let token = values.clone().find(|v| v.split('.').count() == 3)?;
    let echo = values.find(|v| *v != token).unwrap_or(token);
    Some((token.into(), Carrier::Subprotocol(echo)))
}

/// The credentials of an `Authorization: Bearer` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty()).then_some(rest)
}

/// Whether the request's `Authorization: Bearer` equals `key`, compared in constant time.
pub fn bearer_matches(req: &Request<'_>, key: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    match req.authorization.and_then(bearer) {
        Some(given) => given.as_bytes().ct_eq(key).into(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant_of(rooms: &[&str]) -> Grant {
        Grant {
            name: "alice".into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            history: false,
            exp: 0,
        }
    }

    #[test]
    fn room_patterns() {
        let g = grant_of(&["lobby", "team-*"]);
        assert!(g.may_join("lobby"));
        assert!(!g.may_join("lobby2"));
        assert!(g.may_join("team-a"));
        assert!(g.may_join("team-"));
        assert!(!g.may_join("tea"));
        assert!(grant_of(&["*"]).may_join("anything"));
        assert!(!grant_of(&[]).may_join("lobby"));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn configuration_errors_name_the_option() {
        let short = vec![b"short".to_vec()];
        assert!(Verifier::new("HS256", &short, &[], None, None)
            .unwrap_err()
            .contains("--token-secret-file"));
        assert!(Verifier::new("none", &[], &[], None, None)
            .unwrap_err()
            .contains("--token-alg"));
        assert!(Verifier::new("HS384", &[], &[], None, None).is_err());
        assert!(Verifier::new("RS256", &[], &[], None, None)
            .unwrap_err()
            .contains("--token-public-key"));
        assert!(Verifier::new("RS256", &[], &[b"junk".to_vec()], None, None).is_err());
    }

    #[test]
    fn hs256_round_trip_and_refusals() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let secret = vec![7u8; 32];
        let v = Verifier::new("HS256", &[vec![1u8; 32], secret.clone()], &[], None, None).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |claims: serde_json::Value, key: &[u8], alg: Algorithm| {
            encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(key).unwrap(),
            )
            .unwrap()
        };
        let good = sign(
            serde_json::json!({"sub": "alice", "exp": now + 60, "rooms": ["lobby"]}),
            &secret,
            Algorithm::HS256,
        );
        let g = v.verify(&good).unwrap();
        assert_eq!(g.name, "alice");
        assert!(g.may_join("lobby"));
        let expired = sign(
            serde_json::json!({"sub": "a", "exp": now - 60}),
            &secret,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&expired), Err(Rejected::Expired));
        let early = sign(
            serde_json::json!({"sub": "a", "exp": now + 600, "nbf": now + 300}),
            &secret,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&early), Err(Rejected::NotYetValid));
        let other = sign(
            serde_json::json!({"sub": "a", "exp": now + 60}),
            &[9u8; 32],
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&other), Err(Rejected::BadSignature));
        let hs384 = sign(
            serde_json::json!({"sub": "a", "exp": now + 60}),
            &secret,
            Algorithm::HS384,
        );
        assert_eq!(v.verify(&hs384), Err(Rejected::WrongAlgorithm));
        assert!(v.verify(&good[..good.len() - 5]).is_err());
        assert!(v.verify("not a token").is_err());
        let nameless = sign(
            serde_json::json!({"exp": now + 60}),
            &secret,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&nameless), Err(Rejected::Malformed));
    }
}

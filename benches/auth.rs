//! What `--auth token` adds to an upgrade: the handshake of `benches/handshake.rs` with and
//! without a connection token, and the token's verification alone.
//!
//! - `handshake/none`: the browser upgrade to `/ws/general/alice`, open mode:
//!   [`handshake::parse`] + [`handshake::check_upgrade`] + [`handshake::switching_protocols`].
//! - `handshake/hs256`, `handshake/es256`: the same request with `?token=<JWT>` (claims `sub`,
//!   `rooms`, `iat`, `exp`, as `wisp token` writes them), plus what the server does for a token
//!   before the 101: [`auth::token_of`], [`Verifier::verify`], [`Grant::may_join`].
//! - `verify/{hs256,es256,eddsa,rs256}`: [`Verifier::verify`] alone (split, base64, header and
//!   claims JSON, signature, `exp`/`nbf`), for every algorithm `--token-alg` takes.
//!
//! The key pairs are throwaways under `benches/keys/`; they sign nothing else.
//!
//! Run: `cargo bench --bench auth`. Numbers: `docs/benchmarks.md`, "Token verification cost".

#[macro_use]
mod common;

use std::hint::black_box;

use criterion::Criterion;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use wisp::protocol::handshake;
use wisp::protocol::Decoded;
use wisp::server::auth::{self, Grant, Verifier};

const PATH: &str = "/ws/general/alice";
const ROOM: &str = "general";

const HS256_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef";

/// Throwaway key pairs (`benches/keys/README.md`): PKCS#8 private keys for signing the tokens,
/// public keys as given to `--token-public-key`.
const ES256_PRIVATE: &[u8] = include_bytes!("keys/es256.key");
const ES256_PUBLIC: &[u8] = include_bytes!("keys/es256.pub");
const EDDSA_PRIVATE: &[u8] = include_bytes!("keys/ed25519.key");
const EDDSA_PUBLIC: &[u8] = include_bytes!("keys/ed25519.pub");
const RS256_PRIVATE: &[u8] = include_bytes!("keys/rs256.key");
const RS256_PUBLIC: &[u8] = include_bytes!("keys/rs256.pub");

/// A token as `wisp token --sub alice --rooms general` mints it (a day to live), signed with `alg`.
fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": "alice",
        "rooms": [ROOM],
        "history": false,
        "iat": now,
        "exp": now + 86_400,
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign")
}

fn request(target: &str) -> Vec<u8> {
    common::browser_upgrade(target)
}

/// Open mode: no token looked for.
fn upgrade(req: &[u8]) -> Vec<u8> {
    let Ok(Decoded::Done((req, _len))) = handshake::parse(req) else {
        panic!("complete request");
    };
    let accept = handshake::check_upgrade(&req).expect("valid upgrade");
    handshake::switching_protocols(&accept, None)
}

/// Token mode: the token found, verified and its grant checked before the 101.
fn upgrade_with_token(req: &[u8], verifier: &Verifier) -> Vec<u8> {
    let Ok(Decoded::Done((req, _len))) = handshake::parse(req) else {
        panic!("complete request");
    };
    let (token, _carrier) = auth::token_of(&req).expect("a token");
    let grant: Grant = verifier.verify(&token).expect("valid token");
    assert!(grant.may_join(ROOM));
    let accept = handshake::check_upgrade(&req).expect("valid upgrade");
    black_box(grant);
    handshake::switching_protocols(&accept, None)
}

fn bench_auth(c: &mut Criterion) {
    let hs_key = EncodingKey::from_secret(HS256_SECRET).expect("secret");
    let es_key = EncodingKey::from_ec_pem(ES256_PRIVATE).expect("P-256 PKCS#8 key");
    let hs = Verifier::new("HS256", &[HS256_SECRET.to_vec()], &[], None, None).expect("HS256");
    let es = Verifier::new("ES256", &[], &[ES256_PUBLIC.to_vec()], None, None).expect("ES256");
    let hs_token = token(Algorithm::HS256, &hs_key);
    let es_token = token(Algorithm::ES256, &es_key);
    let plain = request(PATH);
    let hs_req = request(&format!("{PATH}?token={hs_token}"));
    let es_req = request(&format!("{PATH}?token={es_token}"));

    let mut group = c.benchmark_group("auth/handshake");
    group.bench_function(format!("none/{}B", plain.len()), |b| {
        b.iter(|| upgrade(black_box(&plain)))
    });
    group.bench_function(format!("hs256/{}B", hs_req.len()), |b| {
        b.iter(|| upgrade_with_token(black_box(&hs_req), &hs))
    });
    group.bench_function(format!("es256/{}B", es_req.len()), |b| {
        b.iter(|| upgrade_with_token(black_box(&es_req), &es))
    });
    group.finish();

    let mut group = c.benchmark_group("auth/verify");
    group.bench_function("hs256", |b| {
        b.iter(|| hs.verify(black_box(&hs_token)).expect("valid"))
    });
    group.bench_function("es256", |b| {
        b.iter(|| es.verify(black_box(&es_token)).expect("valid"))
    });
    // What anyone can make the daemon spend without a key: a well-formed ES256 token whose
    // signature is another token's (the claims differ, so it does not verify).
    let forged = {
        let claims = serde_json::json!({"sub": "mallory", "exp": u32::MAX});
        let other = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &es_key);
        let other = other.expect("sign");
        let (head_claims, _) = es_token.rsplit_once('.').expect("JWT");
        let (_, signature) = other.rsplit_once('.').expect("JWT");
        format!("{head_claims}.{signature}")
    };
    group.bench_function("es256_forged", |b| {
        b.iter(|| es.verify(black_box(&forged)).expect_err("forged"))
    });
    for (name, alg, private, public) in [
        ("eddsa", Algorithm::EdDSA, EDDSA_PRIVATE, EDDSA_PUBLIC),
        ("rs256", Algorithm::RS256, RS256_PRIVATE, RS256_PUBLIC),
    ] {
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private),
            _ => EncodingKey::from_rsa_pem(private),
        }
        .expect("PKCS#8 private key");
        let verifier =
            Verifier::new(&format!("{alg:?}"), &[], &[public.to_vec()], None, None).expect(name);
        let token = token(alg, &key);
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(&token)).expect("valid"))
        });
    }
    group.finish();
}

bench_main! {
    measure_secs = 2;
    targets = bench_auth
}

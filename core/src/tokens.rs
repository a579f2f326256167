//! Users' bearer tokens (`dfs admin token create|list|revoke`, `DFS_TOKEN`): what the cluster
//! keeps of them, how a token is made from that, and how a presented token is checked. Pure:
//! the table lives in the replicated namespace (`Namespace::tokens`) and changes only by Raft
//! commands (`Command::CreateToken`, `Command::RevokeToken`), so every metadata member checks a
//! token the same way and a revocation holds on every member that applied it.
//!
//! ## What it promises
//! - **A token is signed by the cluster.** It reads `dfs1_<id>_<mac>`: the MAC is
//!   HMAC-SHA256, under the cluster's token key, of the token's id and creation time. The key is
//!   made from the leader's OS randomness with the first token, replicated through Raft, and
//!   never leaves the metadata members. So a token's id (which `token list` shows) does not
//!   give the token, and no one without the key can make one.
//! - **Its claims are the cluster's, not the bearer's.** Role, path prefix and expiry are
//!   read from the cluster's record by id, never from the token: nothing in a token can be
//!   edited to widen it.
//! - **Revocation is removal.** A revoked token's record is gone, so the token is refused as
//!   unknown on every member that applied the revocation. A token whose record expired is
//!   refused as expired, and listed until revoked.
//! - **Bounded**: at most `TOKENS_MAX` records, names of at most `TOKEN_NAME_MAX_BYTES`.
//! - MACs are compared in constant time (`hmac`'s `verify_slice`).
//!
//! Why `hmac` (RustCrypto): the same family as the `sha2` already hashing every chunk, and its
//! verification is constant-time by construction. Ed25519 would let storage nodes check
//! without the key; user tokens are checked only by metadata members, which hold it anyway.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use crate::auth::{Grant, Principal, Proof};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How many token records the cluster keeps (expired ones included, until revoked).
pub const TOKENS_MAX: usize = 4096;
/// The longest token name.
pub const TOKEN_NAME_MAX_BYTES: usize = 64;
/// What every token starts with: the format's version, and a prefix secret scanners can find.
pub const TOKEN_PREFIX: &str = "dfs1_";

/// The cluster's secret for signing tokens. Its `Debug` prints no byte of it, so that logging a
/// command never logs the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenKey(pub [u8; 32]);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl Serialize for TokenKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for TokenKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = unhex(&text).filter(|b| b.len() == 32).ok_or_else(|| serde::de::Error::custom("a token key is 64 hex digits"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(TokenKey(key))
    }
}

/// What the cluster keeps of one token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: u64,
    pub name: String,
    pub grant: Grant,
    /// Normalized; `/` for everything.
    pub prefix: String,
    pub created_unix_ms: u64,
    pub expires_unix_ms: Option<u64>,
    /// An S3 access key (`dfs admin s3 key`), not a bearer token: its secret is derived from
    /// the cluster's key as a token is, and only the gateway checks it (SigV4 needs the
    /// secret itself, not a MAC of it). Absent from records of earlier versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub s3: bool,
}

impl TokenRecord {
    pub fn expired(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms.is_some_and(|at| now_unix_ms >= at)
    }

    /// What its bearer is, once its token (or S3 signature) passed.
    pub fn principal(&self) -> Principal {
        Principal { name: self.name.clone(), grant: self.grant, prefix: self.prefix.clone(), proof: Proof::Token { id: self.id } }
    }
}

/// The cluster's tokens: its key (none until the first token) and every record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<TokenKey>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    records: BTreeMap<u64, TokenRecord>,
}

/// Why a token was not accepted (checking) or not made (creating).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed (a dfs token reads dfs1_<16 hex digits>_<64 hex digits>)")]
    Malformed,
    #[error("token {id:016x} is not known to this cluster: revoked, or made by another cluster")]
    Unknown { id: u64 },
    #[error("token {id:016x} has a bad signature: not made by this cluster, or altered")]
    BadSignature { id: u64 },
    #[error("token {id:016x} ({name}) expired at {}; ask an admin for a new one", crate::namespace::utc_time(*.at))]
    Expired { id: u64, name: String, at: u64 },
    #[error("token {0:016x} already exists")]
    Exists(u64),
    #[error("the cluster already keeps {TOKENS_MAX} tokens: revoke some first")]
    TooMany,
    #[error("a token's name is 1 to {TOKEN_NAME_MAX_BYTES} bytes of letters, digits and . _ @ -, not {0:?}")]
    BadName(String),
}

impl TokenTable {
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.records.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = &TokenRecord> {
        self.records.values()
    }

    /// Adds `record`. `key` becomes the cluster's key if it has none yet (the first token);
    /// otherwise it is ignored, so that two creations racing with different fresh keys both
    /// end signed by the one that was applied first.
    pub fn create(&mut self, record: TokenRecord, key: TokenKey) -> Result<TokenRecord, TokenError> {
        check_name(&record.name)?;
        if self.records.contains_key(&record.id) {
            return Err(TokenError::Exists(record.id));
        }
        if self.records.len() >= TOKENS_MAX {
            return Err(TokenError::TooMany);
        }
        self.key.get_or_insert(key);
        self.records.insert(record.id, record.clone());
        Ok(record)
    }

    /// Removes token `id`, returning what it was.
    pub fn revoke(&mut self, id: u64) -> Result<TokenRecord, TokenError> {
        self.records.remove(&id).ok_or(TokenError::Unknown { id })
    }

    /// The bearer token for `record` (which must be in the table): the MAC of its id and
    /// creation time under the cluster's key. `None` before the first token made the key.
    pub fn token(&self, record: &TokenRecord) -> Option<String> {
        let key = self.key?;
        Some(format!("{TOKEN_PREFIX}{:016x}_{}", record.id, hex(&mac(&key, record).finalize().into_bytes())))
    }

    /// Whom `token` stands for at `now_unix_ms`.
    pub fn authenticate(&self, token: &str, now_unix_ms: u64) -> Result<Principal, TokenError> {
        let (id, tag) = parse(token)?;
        // An S3 key's bearer token is never handed out; refused as unknown all the same.
        let record = self.records.get(&id).filter(|r| !r.s3).ok_or(TokenError::Unknown { id })?;
        let key = self.key.ok_or(TokenError::Unknown { id })?;
        mac(&key, record).verify_slice(&tag).map_err(|_| TokenError::BadSignature { id })?;
        if let Some(at) = record.expires_unix_ms.filter(|_| record.expired(now_unix_ms)) {
            return Err(TokenError::Expired { id, name: record.name.clone(), at });
        }
        Ok(record.principal())
    }
}

impl TokenTable {
    /// The secret access key of the S3 key `record` (which must be in the table): the MAC of
    /// its id and creation time under the cluster's key, under another label than a bearer
    /// token's, as 40 hex digits (the length of AWS's secrets). `None` before the key exists.
    pub fn s3_secret(&self, record: &TokenRecord) -> Option<String> {
        let key = self.key?;
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key.0).expect("HMAC takes any key length");
        mac.update(b"dfs s3 secret v1\0");
        mac.update(&record.id.to_be_bytes());
        mac.update(&record.created_unix_ms.to_be_bytes());
        Some(hex(&mac.finalize().into_bytes()[..20]))
    }

    /// The S3 key named `access_key_id`, and its secret, if it is known and not expired at
    /// `now_unix_ms`.
    pub fn s3_key(&self, access_key_id: &str, now_unix_ms: u64) -> Result<(&TokenRecord, String), TokenError> {
        let id = parse_s3_access_key_id(access_key_id).ok_or(TokenError::Malformed)?;
        let record = self.records.get(&id).filter(|r| r.s3).ok_or(TokenError::Unknown { id })?;
        if let Some(at) = record.expires_unix_ms.filter(|_| record.expired(now_unix_ms)) {
            return Err(TokenError::Expired { id, name: record.name.clone(), at });
        }
        let secret = self.s3_secret(record).ok_or(TokenError::Unknown { id })?;
        Ok((record, secret))
    }
}

/// What every S3 access key id starts with; 16 uppercase hex digits (the record's id) follow,
/// 20 characters in all, as AWS's are.
pub const S3_ACCESS_KEY_PREFIX: &str = "DFSK";

/// The access key id of the S3 key whose record is `id`.
pub fn s3_access_key_id(id: u64) -> String {
    format!("{S3_ACCESS_KEY_PREFIX}{id:016X}")
}

/// The record id an access key id names; `None` for anything not made by `s3_access_key_id`.
pub fn parse_s3_access_key_id(access_key_id: &str) -> Option<u64> {
    let digits = access_key_id.strip_prefix(S3_ACCESS_KEY_PREFIX)?;
    let upper_hex = digits.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    (digits.len() == 16 && upper_hex).then(|| u64::from_str_radix(digits, 16).ok()).flatten()
}

/// A token's name: what `list` shows and refusals name.
pub fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty() && name.len() <= TOKEN_NAME_MAX_BYTES && name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadName(name.chars().take(TOKEN_NAME_MAX_BYTES + 1).collect()))
    }
}

/// The MAC over what identifies a record: its id, and its creation time, so that a new token
/// that happened to draw a revoked one's id does not revive it.
fn mac(key: &TokenKey, record: &TokenRecord) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(b"dfs user token v1\0");
    mac.update(&record.id.to_be_bytes());
    mac.update(&record.created_unix_ms.to_be_bytes());
    mac
}

/// A token's id and MAC. Surrounding whitespace (a token read from a file) is ignored.
fn parse(token: &str) -> Result<(u64, Vec<u8>), TokenError> {
    let rest = token.trim().strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
    let (id, tag) = rest.split_once('_').ok_or(TokenError::Malformed)?;
    // Lowercase hex only, as tokens are made: one token has one spelling (the fuzzer found
    // uppercase digits, and `from_str_radix` takes a leading `+`).
    let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if id.len() != 16 || tag.len() != 64 || !lower_hex(id) || !lower_hex(tag) {
        return Err(TokenError::Malformed);
    }
    let id = u64::from_str_radix(id, 16).map_err(|_| TokenError::Malformed)?;
    let tag = unhex(tag).ok_or(TokenError::Malformed)?;
    Ok((id, tag))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(id: u64, grant: Grant, expires: Option<u64>) -> TokenRecord {
        TokenRecord { id, name: format!("user{id}"), grant, prefix: "/home".into(), created_unix_ms: 1_000, expires_unix_ms: expires, s3: false }
    }

    /// An S3 key's secret comes from the cluster's key and its record, is the same on every
    /// member, differs between keys and clusters, and its record is no bearer token.
    #[test]
    fn s3_keys_have_derived_secrets_and_are_no_tokens() {
        let s3 = |id| TokenRecord { s3: true, ..record(id, Grant::Write, Some(9_000)) };
        let t = table_with(&[record(1, Grant::Read, None), s3(2), s3(3)]);
        let id = s3_access_key_id(2);
        assert_eq!((id.len(), id.as_str()), (20, "DFSK0000000000000002"));
        assert_eq!(parse_s3_access_key_id(&id), Some(2));
        for bad in ["DFSK000000000000002", "DFSK000000000000000g", "dfsk0000000000000002", "AKIA0000000000000002", "DFSK+000000000000002"] {
            assert_eq!(parse_s3_access_key_id(bad), None, "{bad}");
        }
        let (r, secret) = t.s3_key(&id, 1_000).unwrap();
        assert_eq!((r.id, secret.len()), (2, 40));
        assert_eq!(table_with(&[record(1, Grant::Read, None), s3(2)]).s3_key(&id, 0).unwrap().1, secret, "the same on every member");
        assert_ne!(t.s3_key(&s3_access_key_id(3), 0).unwrap().1, secret);
        let mut other = TokenTable::default();
        other.create(s3(2), TokenKey([8; 32])).unwrap();
        assert_ne!(other.s3_key(&id, 0).unwrap().1, secret, "another cluster's key");
        assert!(matches!(t.s3_key(&id, 9_000), Err(TokenError::Expired { id: 2, .. })));
        assert_eq!(t.s3_key(&s3_access_key_id(1), 0).err(), Some(TokenError::Unknown { id: 1 }), "a bearer token is no S3 key");
        assert_eq!(t.s3_key(&s3_access_key_id(7), 0).err(), Some(TokenError::Unknown { id: 7 }));
        let bearer = t.token(&s3(2)).unwrap();
        assert_eq!(t.authenticate(&bearer, 0), Err(TokenError::Unknown { id: 2 }), "an S3 key is no bearer token");
    }

    fn table_with(records: &[TokenRecord]) -> TokenTable {
        let mut t = TokenTable::default();
        for r in records {
            t.create(r.clone(), TokenKey([7; 32])).unwrap();
        }
        t
    }

    #[test]
    fn a_made_token_stands_for_its_record_until_revoked() {
        let mut t = table_with(&[record(1, Grant::Read, None), record(2, Grant::Admin, Some(5_000))]);
        let token = t.token(&record(1, Grant::Read, None)).unwrap();
        assert!(token.starts_with("dfs1_0000000000000001_"), "{token}");
        let p = t.authenticate(&token, 2_000).unwrap();
        assert_eq!((p.name.as_str(), p.grant, p.prefix.as_str(), p.proof), ("user1", Grant::Read, "/home", Proof::Token { id: 1 }));
        // Whitespace around it (read from a file) is fine.
        assert!(t.authenticate(&format!(" {token}\n"), 2_000).is_ok());
        t.revoke(1).unwrap();
        assert_eq!(t.authenticate(&token, 2_000), Err(TokenError::Unknown { id: 1 }));
        assert_eq!(t.revoke(1), Err(TokenError::Unknown { id: 1 }));
    }

    #[test]
    fn an_expired_token_is_refused_from_its_expiry_on() {
        let t = table_with(&[record(2, Grant::Admin, Some(5_000))]);
        let token = t.token(&record(2, Grant::Admin, Some(5_000))).unwrap();
        assert!(t.authenticate(&token, 4_999).is_ok());
        assert!(matches!(t.authenticate(&token, 5_000), Err(TokenError::Expired { id: 2, at: 5_000, .. })));
    }

    /// The first key stays: a second creation's fresh key is ignored, and tokens made before
    /// it still pass.
    #[test]
    fn the_first_key_signs_every_token() {
        let mut t = table_with(&[record(1, Grant::Read, None)]);
        let first = t.token(&record(1, Grant::Read, None)).unwrap();
        t.create(record(2, Grant::Write, None), TokenKey([9; 32])).unwrap();
        assert!(t.authenticate(&first, 0).is_ok());
        let other = table_with(&[]);
        let mut other = other;
        other.create(record(1, Grant::Read, None), TokenKey([9; 32])).unwrap();
        // The same record under another cluster's key: a bad signature here.
        let foreign = other.token(&record(1, Grant::Read, None)).unwrap();
        assert_eq!(t.authenticate(&foreign, 0), Err(TokenError::BadSignature { id: 1 }));
    }

    #[test]
    fn records_are_bounded_and_named_sanely() {
        let mut t = TokenTable::default();
        for id in 0..TOKENS_MAX as u64 {
            t.create(record(id, Grant::Read, None), TokenKey([1; 32])).unwrap();
        }
        assert_eq!(t.create(record(u64::MAX, Grant::Read, None), TokenKey([1; 32])), Err(TokenError::TooMany));
        assert_eq!(t.create(record(3, Grant::Read, None), TokenKey([1; 32])), Err(TokenError::Exists(3)));
        for bad in ["", "a b", "x/y", "é", &"n".repeat(TOKEN_NAME_MAX_BYTES + 1)] {
            assert!(matches!(check_name(bad), Err(TokenError::BadName(_))), "{bad:?}");
        }
        check_name("alice.smith@ci-1_x").unwrap();
    }

    #[test]
    fn the_key_survives_serialization_and_is_never_printed() {
        let t = table_with(&[record(1, Grant::Read, None)]);
        let json = serde_json::to_string(&t).unwrap();
        let back: TokenTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert!(!format!("{t:?}").contains("07070707"), "{t:?}");
        assert_eq!(serde_json::from_str::<TokenTable>("{}").unwrap(), TokenTable::default());
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-tokens.txt")))),
            ..ProptestConfig::default()
        })]
        /// Any change to a valid token (a digit of its id or MAC) makes it refused, never
        /// accepted as another; garbage is malformed, never a panic.
        #[test]
        fn altered_tokens_are_refused(pos in 5usize..86, digit in 0u8..16, garbage in ".{0,100}") {
            let t = table_with(&[record(1, Grant::Admin, None), record(2, Grant::Read, None)]);
            let token = t.token(&record(1, Grant::Admin, None)).unwrap();
            let mut bytes = token.clone().into_bytes();
            if bytes[pos] != b'_' {
                bytes[pos] = b"0123456789abcdef"[digit as usize];
            }
            let altered = String::from_utf8(bytes).unwrap();
            match t.authenticate(&altered, 0) {
                Ok(p) => prop_assert!(altered == token && p.proof == Proof::Token { id: 1 }, "{altered} accepted as {p:?}"),
                Err(e) => prop_assert!(altered != token, "{e}"),
            }
            let _ = t.authenticate(&garbage, 0);
        }
    }
}

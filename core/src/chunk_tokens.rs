//! Chunk access tokens, as HDFS's block tokens: the metadata leader signs, with each placement
//! and each chunk location it hands out, a short-lived token for that chunk and that operation
//! (read or write); a storage node reads or writes a chunk only with a valid one. So knowing a
//! chunk's id and a storage node's address is not enough to read or overwrite it. Pure: the
//! keys live in the replicated namespace (`Namespace::chunk_keys`), change only by Raft
//! commands (`Command::RotateChunkKey`), and reach storage nodes with registration and
//! heartbeat replies, over the connection they open to the metadata cluster (mutual TLS).
//!
//! ## What it promises
//! - **A token binds a chunk, an operation and an expiry** under a MAC (HMAC-SHA256) with one
//!   of the cluster's chunk keys: a token for one chunk does not open another, a read token
//!   does not write, an altered or forged one fails its MAC, an expired one is refused.
//! - **Keys rotate.** The leader adds a key every `ChunkKeyPolicy::rotate_after_ms` and the
//!   namespace keeps the newest `CHUNK_KEYS_KEPT`, so a token stays checkable for its whole
//!   life. A new key signs only once it is `activate_after_ms` old: by then every live storage
//!   node has heard of it (heartbeats are far more frequent), so no node sees a token under a
//!   key it does not know yet. The first key signs at once (there is no other).
//! - **Repair orders carry a read token** for their chunk, signed the same way: a storage node
//!   copies a replica from another only as the leader ordered.
//! - Storage nodes check tokens when the cluster runs TLS (and always in the simulation); a
//!   node run with `--insecure` checks none, as it checks nothing else.
//!
//! Why HMAC, as HDFS's block tokens: one SHA-256 pass per chunk on both sides (a small-file
//! batch carries up to 256 tokens). Ed25519 would keep the signing key from storage nodes, at
//! about 50 µs per verification; a storage node already holds its chunks' bytes.

use serde::{Deserialize, Serialize};

use crate::ids::ChunkId;
use crate::proto;
use crate::tokens::TokenKey;
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Chunk keys kept: the signing one, the one before (tokens it signed still live), and a new
/// one not signing yet.
pub const CHUNK_KEYS_KEPT: usize = 3;

/// When keys turn over and how long tokens live: the metadata leader's (its
/// `LeaderConfig::chunk_keys`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkKeyPolicy {
    /// A new key this long after the newest.
    pub rotate_after_ms: u64,
    /// A key signs once it is this old (every storage node must have it by then).
    pub activate_after_ms: u64,
    /// A token is valid this long after it is signed.
    pub token_life_ms: u64,
}

impl Default for ChunkKeyPolicy {
    /// HDFS's block tokens live 10 hours and their keys turn over every 10 hours. A token
    /// covers a whole transfer: a download gets every chunk's token at once. A new key waits
    /// 5 minutes before it signs: five times the longest heartbeat interval a storage node
    /// takes (60 s).
    fn default() -> Self {
        ChunkKeyPolicy { rotate_after_ms: 10 * 3_600_000, activate_after_ms: 5 * 60_000, token_life_ms: 10 * 3_600_000 }
    }
}

impl ChunkKeyPolicy {
    /// Whether the keys must be kept for the whole life of every token `CHUNK_KEYS_KEPT`
    /// allows: a key signs from `activate_after_ms` to `rotate_after_ms + activate_after_ms`
    /// after it is made, its tokens live `token_life_ms` more, and it is dropped when the
    /// third key after it is made.
    pub fn is_consistent(&self) -> bool {
        let signs_until = self.rotate_after_ms.saturating_add(self.activate_after_ms);
        let dropped_at = self.rotate_after_ms.saturating_mul(CHUNK_KEYS_KEPT as u64);
        self.activate_after_ms < self.rotate_after_ms && signs_until.saturating_add(self.token_life_ms) <= dropped_at
    }
}

/// One chunk key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkKey {
    pub id: u32,
    pub key: TokenKey,
    pub made_unix_ms: u64,
}

/// The cluster's chunk keys, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkKeys {
    keys: Vec<ChunkKey>,
}

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ChunkOp {
    Read = 1,
    Write = 2,
}

impl ChunkOp {
    fn as_str(self) -> &'static str {
        match self {
            ChunkOp::Read => "read",
            ChunkOp::Write => "write",
        }
    }
}

/// Why a chunk call's token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkTokenError {
    #[error("chunk {chunk}: no access token (a client gets one from the metadata cluster with each placement and location)")]
    Missing { chunk: ChunkId },
    #[error("chunk {chunk}: the access token is under key {key}, which this node does not know (yet, or any more)")]
    UnknownKey { chunk: ChunkId, key: u32 },
    #[error("chunk {chunk}: the access token's signature does not match: forged, altered, or for another chunk")]
    BadSignature { chunk: ChunkId },
    #[error("chunk {chunk}: the access token allows no {op}")]
    WrongOp { chunk: ChunkId, op: &'static str },
    #[error("chunk {chunk}: the access token expired at {at} (ask the metadata cluster again)", at = crate::namespace::utc_time(*.expired_unix_ms))]
    Expired { chunk: ChunkId, expired_unix_ms: u64 },
    #[error("this node has no chunk keys yet (it has not heard from the metadata leader since it started)")]
    NoKeys,
}

impl ChunkKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[ChunkKey] {
        &self.keys
    }

    /// The keys a storage node was sent (kept as they came: the leader decides what is kept).
    pub fn from_keys(keys: Vec<ChunkKey>) -> ChunkKeys {
        let mut keys = keys;
        keys.sort_by_key(|k| k.id);
        keys.dedup_by_key(|k| k.id);
        let drop = keys.len().saturating_sub(CHUNK_KEYS_KEPT);
        keys.drain(..drop);
        ChunkKeys { keys }
    }

    /// Adds a key (`Command::RotateChunkKey`), numbered after the newest, dropping the oldest
    /// beyond `CHUNK_KEYS_KEPT`.
    pub fn rotate(&mut self, key: TokenKey, made_unix_ms: u64) -> u32 {
        let id = self.keys.last().map_or(1, |k| k.id.wrapping_add(1).max(1));
        self.keys.push(ChunkKey { id, key, made_unix_ms });
        if self.keys.len() > CHUNK_KEYS_KEPT {
            self.keys.remove(0);
        }
        id
    }

    /// Whether the leader should add a key at `now_unix_ms`.
    pub fn rotation_due(&self, policy: &ChunkKeyPolicy, now_unix_ms: u64) -> bool {
        self.keys.last().is_none_or(|k| now_unix_ms.saturating_sub(k.made_unix_ms) >= policy.rotate_after_ms)
    }

    /// The key that signs at `now_unix_ms`: the newest old enough to be known everywhere, or
    /// the only one there is.
    fn signing(&self, policy: &ChunkKeyPolicy, now_unix_ms: u64) -> Option<&ChunkKey> {
        let active = self.keys.iter().rev().find(|k| now_unix_ms.saturating_sub(k.made_unix_ms) >= policy.activate_after_ms);
        active.or(self.keys.first())
    }

    /// A token for `op` on `chunk`, valid `policy.token_life_ms` from `now_unix_ms`; `None`
    /// before the cluster has a key (the leader makes one at its first housekeeping).
    pub fn sign(&self, policy: &ChunkKeyPolicy, chunk: ChunkId, op: ChunkOp, now_unix_ms: u64) -> Option<proto::ChunkToken> {
        let key = self.signing(policy, now_unix_ms)?;
        let expires_unix_ms = now_unix_ms.saturating_add(policy.token_life_ms);
        let mac = mac(key, chunk, op as u32, expires_unix_ms).finalize().into_bytes();
        Some(proto::ChunkToken { key_id: key.id, ops: op as u32, expires_unix_ms, mac: mac.to_vec().into() })
    }

    /// Whether `token` allows `op` on `chunk` at `now_unix_ms`.
    pub fn check(&self, token: Option<&proto::ChunkToken>, chunk: ChunkId, op: ChunkOp, now_unix_ms: u64) -> Result<(), ChunkTokenError> {
        let token = token.ok_or(ChunkTokenError::Missing { chunk })?;
        if self.keys.is_empty() {
            return Err(ChunkTokenError::NoKeys);
        }
        let key = self.keys.iter().find(|k| k.id == token.key_id).ok_or(ChunkTokenError::UnknownKey { chunk, key: token.key_id })?;
        mac(key, chunk, token.ops, token.expires_unix_ms).verify_slice(&token.mac).map_err(|_| ChunkTokenError::BadSignature { chunk })?;
        if token.ops & op as u32 == 0 {
            return Err(ChunkTokenError::WrongOp { chunk, op: op.as_str() });
        }
        if now_unix_ms >= token.expires_unix_ms {
            return Err(ChunkTokenError::Expired { chunk, expired_unix_ms: token.expires_unix_ms });
        }
        Ok(())
    }

    /// The keys as a storage node is sent them.
    pub fn to_proto(&self) -> Vec<proto::ChunkKey> {
        self.keys.iter().map(|k| proto::ChunkKey { id: k.id, key: k.key.0.to_vec().into(), made_unix_ms: k.made_unix_ms }).collect()
    }

    /// The keys a registration or heartbeat reply carried; malformed ones (not 32 bytes) are
    /// left out.
    pub fn from_proto(keys: &[proto::ChunkKey]) -> ChunkKeys {
        ChunkKeys::from_keys(
            keys.iter().filter_map(|k| Some(ChunkKey { id: k.id, key: TokenKey(k.key.as_ref().try_into().ok()?), made_unix_ms: k.made_unix_ms })).collect(),
        )
    }
}

fn mac(key: &ChunkKey, chunk: ChunkId, ops: u32, expires_unix_ms: u64) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key.key.0).expect("HMAC takes any key length");
    mac.update(b"dfs chunk token v1\0");
    mac.update(&key.id.to_be_bytes());
    mac.update(chunk.as_bytes());
    mac.update(&ops.to_be_bytes());
    mac.update(&expires_unix_ms.to_be_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: ChunkKeyPolicy = ChunkKeyPolicy { rotate_after_ms: 1000, activate_after_ms: 100, token_life_ms: 1000 };

    fn keys() -> ChunkKeys {
        let mut k = ChunkKeys::default();
        k.rotate(TokenKey([1; 32]), 0);
        k
    }

    #[test]
    fn the_default_policy_keeps_keys_for_their_tokens_lives() {
        assert!(ChunkKeyPolicy::default().is_consistent());
        assert!(POLICY.is_consistent());
        assert!(!ChunkKeyPolicy { token_life_ms: 5000, ..POLICY }.is_consistent());
    }

    #[test]
    fn a_token_opens_its_chunk_for_its_operation_until_it_expires() {
        let k = keys();
        let (a, b) = (ChunkId([1; 16]), ChunkId([2; 16]));
        let read = k.sign(&POLICY, a, ChunkOp::Read, 10).unwrap();
        assert_eq!(k.check(Some(&read), a, ChunkOp::Read, 500), Ok(()));
        assert_eq!(k.check(Some(&read), b, ChunkOp::Read, 500), Err(ChunkTokenError::BadSignature { chunk: b }));
        assert_eq!(k.check(Some(&read), a, ChunkOp::Write, 500), Err(ChunkTokenError::WrongOp { chunk: a, op: "write" }));
        assert_eq!(k.check(Some(&read), a, ChunkOp::Read, 1010), Err(ChunkTokenError::Expired { chunk: a, expired_unix_ms: 1010 }));
        assert_eq!(k.check(None, a, ChunkOp::Read, 500), Err(ChunkTokenError::Missing { chunk: a }));
        // Widening it (more operations, a later expiry) breaks its signature.
        let widened = proto::ChunkToken { ops: 3, ..read.clone() };
        assert_eq!(k.check(Some(&widened), a, ChunkOp::Write, 500), Err(ChunkTokenError::BadSignature { chunk: a }));
        let later = proto::ChunkToken { expires_unix_ms: 99_999, ..read.clone() };
        assert_eq!(k.check(Some(&later), a, ChunkOp::Read, 5000), Err(ChunkTokenError::BadSignature { chunk: a }));
        // A node without keys, or without that key.
        assert_eq!(ChunkKeys::default().check(Some(&read), a, ChunkOp::Read, 500), Err(ChunkTokenError::NoKeys));
        let other = ChunkKeys::from_keys(vec![ChunkKey { id: 9, key: TokenKey([1; 32]), made_unix_ms: 0 }]);
        assert_eq!(other.check(Some(&read), a, ChunkOp::Read, 500), Err(ChunkTokenError::UnknownKey { chunk: a, key: 1 }));
    }

    /// A new key signs only once it is old enough to be known everywhere; tokens of the keys
    /// kept still pass; a key rotated out takes its tokens with it.
    #[test]
    fn keys_rotate_and_sign_only_once_active() {
        let mut k = keys();
        assert!(!k.rotation_due(&POLICY, 999));
        assert!(k.rotation_due(&POLICY, 1000));
        let chunk = ChunkId([3; 16]);
        let old = k.sign(&POLICY, chunk, ChunkOp::Write, 1000).unwrap();
        assert_eq!(k.rotate(TokenKey([2; 32]), 1000), 2);
        assert_eq!(k.sign(&POLICY, chunk, ChunkOp::Write, 1050).unwrap().key_id, 1, "too new to sign");
        assert_eq!(k.sign(&POLICY, chunk, ChunkOp::Write, 1100).unwrap().key_id, 2);
        assert_eq!(k.check(Some(&old), chunk, ChunkOp::Write, 1500), Ok(()));
        k.rotate(TokenKey([3; 32]), 2000);
        k.rotate(TokenKey([4; 32]), 3000);
        assert_eq!(k.keys().iter().map(|k| k.id).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(k.check(Some(&old), chunk, ChunkOp::Write, 1500), Err(ChunkTokenError::UnknownKey { chunk, key: 1 }));
        // Sent to a storage node and back.
        assert_eq!(ChunkKeys::from_proto(&k.to_proto()), k);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-chunk-tokens.txt")))),
            ..ProptestConfig::default()
        })]
        /// Any change to a token's fields is refused, never taken for another token.
        #[test]
        fn altered_chunk_tokens_are_refused(byte in 0usize..32, bit in 0u8..8, field in 0u8..4) {
            let k = keys();
            let chunk = ChunkId([5; 16]);
            let token = k.sign(&POLICY, chunk, ChunkOp::Read, 10).unwrap();
            let mut bad = token.clone();
            match field {
                0 => { let mut m = bad.mac.to_vec(); m[byte] ^= 1 << bit; bad.mac = m.into(); }
                1 => bad.ops ^= 1 << (bit % 2 + 1),
                2 => bad.expires_unix_ms ^= 1 << (bit + 8),
                _ => { let mut id = chunk.0; id[byte % 16] ^= 1 << bit; prop_assert!(k.check(Some(&token), ChunkId(id), ChunkOp::Read, 20).is_err()); return Ok(()); }
            }
            prop_assert!(k.check(Some(&bad), chunk, ChunkOp::Read, 20).is_err());
        }
    }
}

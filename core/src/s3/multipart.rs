//! Multipart uploads (S3's CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
//! AbortMultipartUpload, ListParts, ListMultipartUploads): where an upload's parts live in dfs,
//! and whether a completion may go ahead. Pure; the gateway (`bins/src/s3/multipart.rs`)
//! carries it out.
//!
//! ## Layout
//! An upload is a directory, `/.s3-uploads/<bucket>/<upload id>` (no bucket starts with `.`,
//! so it is never listed as one). In it:
//! - `upload`, the marker: its bytes are the key, and what the gateway keeps of the object
//!   (content type, standard headers, user metadata, as CreateMultipartUpload gave them) is
//!   kept with it, to be the object's at completion;
//! - `part-00001` to `part-10000`, one file per part, uploaded as a PutObject is but with a
//!   standalone checksum per chunk, its MD5 as its ETag. A part uploaded again replaces the
//!   one before.
//!
//! Completion joins the parts named into the object in one metadata command (`CopyFile` with
//! `append`): the object shares the parts' chunks, so no byte is copied a second time, and it
//! appears whole or not at all. The upload's directory then goes, and with it the parts left
//! out (their chunks are collected; the object's chunks stay, held by the object).
//!
//! ## Upload ids
//! 32 hex digits: the creation time in milliseconds (12), random (12), and the first 8 of the
//! SHA-256 of the bucket and key. So ids sort by age, and a request naming an upload with
//! another key is refused (NoSuchUpload, as S3 answers) without reading the marker.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Where every bucket's uploads in progress live.
pub const UPLOADS_DIR: &str = "/.s3-uploads";
/// The marker's name in an upload's directory.
pub const MARKER: &str = "upload";
/// S3's part numbers: 1 to this.
pub const PART_NUMBER_MAX: i32 = 10_000;
/// Every part but the last holds at least this many bytes (S3's minimum).
pub const PART_BYTES_MIN: u64 = 5 * 1024 * 1024;
/// No part holds more (S3's maximum).
pub const PART_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Most parts one ListParts page holds, and the default (S3's).
pub const PARTS_LISTED_MAX: usize = 1000;
/// Most uploads one ListMultipartUploads page holds, and the default (S3's).
pub const UPLOADS_LISTED_MAX: usize = 1000;
/// Most uploads of one bucket a ListMultipartUploads looks at: past it the listing is cut
/// short (and says so), so one request's work stays bounded.
pub const UPLOADS_SCANNED_MAX: usize = 10_000;

/// An upload's id, checked: nothing else is ever made into a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UploadId(String);

fn key_tag(bucket: &str, key: &str) -> String {
    let digest = Sha256::new_with_prefix(bucket.as_bytes()).chain_update(b"/").chain_update(key.as_bytes()).finalize();
    hex(&digest[..4])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl UploadId {
    /// A new id for `key` in `bucket`, made at `unix_ms` with 48 `random` bits.
    pub fn new(bucket: &str, key: &str, unix_ms: u64, random: u64) -> Self {
        UploadId(format!("{:012x}{:012x}{}", unix_ms & 0xffff_ffff_ffff, random & 0xffff_ffff_ffff, key_tag(bucket, key)))
    }

    /// `id` as a client sent it, if it is an id of an upload of `key` in `bucket`.
    pub fn parse(bucket: &str, key: &str, id: &str) -> Option<Self> {
        let well_formed = id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (well_formed && id[24..] == key_tag(bucket, key)).then(|| UploadId(id.to_string()))
    }

    /// `name`, a directory's name in a bucket's uploads, if it is an upload id of any key.
    pub fn from_dir_name(name: &str) -> Option<Self> {
        (name.len() == 32 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| UploadId(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When it was made (ms since the Unix epoch).
    pub fn unix_ms(&self) -> u64 {
        u64::from_str_radix(&self.0[..12], 16).unwrap_or(0)
    }

    /// Whether it was made for `key` in `bucket` (a marker's key is checked against it).
    pub fn is_for(&self, bucket: &str, key: &str) -> bool {
        self.0[24..] == key_tag(bucket, key)
    }
}

/// The directory of `bucket`'s uploads.
pub fn bucket_uploads_dir(bucket: &str) -> String {
    format!("{UPLOADS_DIR}/{bucket}")
}

/// An upload's directory.
pub fn upload_dir(bucket: &str, id: &UploadId) -> String {
    format!("{UPLOADS_DIR}/{bucket}/{}", id.0)
}

pub fn marker_path(upload_dir: &str) -> String {
    format!("{upload_dir}/{MARKER}")
}

/// Why a part cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("part number {0} is outside 1 to {PART_NUMBER_MAX}")]
    NumberOutOfRange(i32),
    #[error("a part of {0} bytes is over S3's {PART_BYTES_MAX}")]
    TooLarge(u64),
}

/// Where part `number` of the upload in `upload_dir` is kept, if the part may be taken.
pub fn part_path(upload_dir: &str, number: i32, size: u64) -> Result<String, PartError> {
    if !(1..=PART_NUMBER_MAX).contains(&number) {
        return Err(PartError::NumberOutOfRange(number));
    }
    if size > PART_BYTES_MAX {
        return Err(PartError::TooLarge(size));
    }
    Ok(format!("{upload_dir}/part-{number:05}"))
}

/// The part number a file in an upload's directory holds, if it is a part.
pub fn part_number(name: &str) -> Option<i32> {
    let digits = name.strip_prefix("part-")?;
    let n: i32 = digits.parse().ok()?;
    (digits.len() == 5 && (1..=PART_NUMBER_MAX).contains(&n)).then_some(n)
}

/// A part as the upload's directory holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    pub size: u64,
    /// Its ETag: the hex MD5 of its bytes.
    pub etag: String,
    /// Its file, to be joined.
    pub path: String,
}

/// A part as CompleteMultipartUpload names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPart {
    pub number: i32,
    /// Without quotes, as the client had it from UploadPart.
    pub etag: String,
}

/// Why a completion is refused; each is an S3 error code of its own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompletionError {
    #[error("a completion names at least one part")]
    NoParts,
    #[error("part {number} is listed after part {after}: parts are listed in ascending order, each once")]
    InvalidPartOrder { number: i32, after: i32 },
    #[error("part {number}: {reason}")]
    InvalidPart { number: i32, reason: String },
    #[error("part {number} holds {size} bytes; every part but the last holds at least {PART_BYTES_MIN}")]
    EntityTooSmall { number: i32, size: u64 },
}

/// What a completion makes: the files to join, in order, and the object's ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub files: Vec<String>,
    pub size: u64,
    /// S3's multipart ETag: the hex MD5 of the parts' MD5s (as bytes), `-` and their number.
    pub etag: String,
}

/// Checks the parts a client names against those stored, as S3 does: ascending numbers, each
/// stored with the ETag named, each but the last at least `PART_BYTES_MIN`.
pub fn complete(named: &[NamedPart], stored: &BTreeMap<i32, StoredPart>) -> Result<Completion, CompletionError> {
    if named.is_empty() {
        return Err(CompletionError::NoParts);
    }
    let mut md5s = Vec::with_capacity(named.len() * 16);
    let mut files = Vec::with_capacity(named.len());
    let mut size = 0u64;
    // The order first, as S3 checks it, before any part is looked up.
    if let Some(w) = named.windows(2).find(|w| w[1].number <= w[0].number) {
        return Err(CompletionError::InvalidPartOrder { number: w[1].number, after: w[0].number });
    }
    for (i, part) in named.iter().enumerate() {
        let invalid = |reason: &str| CompletionError::InvalidPart { number: part.number, reason: reason.to_string() };
        let found = stored.get(&part.number).ok_or_else(|| invalid("no such part was uploaded (or it was replaced since)"))?;
        if found.etag != part.etag.trim_matches('"') {
            return Err(invalid(&format!("its ETag is {}, not {}", found.etag, part.etag)));
        }
        let md5 = decode_md5(&found.etag).ok_or_else(|| invalid("its stored ETag is no MD5"))?;
        if i + 1 < named.len() && found.size < PART_BYTES_MIN {
            return Err(CompletionError::EntityTooSmall { number: part.number, size: found.size });
        }
        md5s.extend_from_slice(&md5);
        files.push(found.path.clone());
        size += found.size;
    }
    let etag = format!("{}-{}", hex(&<md5::Md5 as md5::Digest>::digest(&md5s)), named.len());
    Ok(Completion { files, size, etag })
}

/// The ETag the parts `named` make when joined, if each names an MD5: what a completion
/// retried after the upload went is checked against.
pub fn joined_etag(named: &[NamedPart]) -> Option<String> {
    let mut md5s = Vec::with_capacity(named.len() * 16);
    for part in named {
        md5s.extend_from_slice(&decode_md5(part.etag.trim_matches('"'))?);
    }
    (!named.is_empty()).then(|| format!("{}-{}", hex(&<md5::Md5 as md5::Digest>::digest(&md5s)), named.len()))
}

fn decode_md5(etag: &str) -> Option<[u8; 16]> {
    if etag.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(etag.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An upload in progress, as ListMultipartUploads shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadEntry {
    pub key: String,
    pub id: UploadId,
}

/// One page of ListMultipartUploads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadsPage {
    pub uploads: Vec<UploadEntry>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

/// The parameters of one ListMultipartUploads request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadsParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub upload_id_marker: Option<String>,
    pub max_uploads: usize,
}

/// S3's ListMultipartUploads over `all` (every upload of the bucket, in any order): by key,
/// then by age; after `key_marker` (with `upload_id_marker`, also the uploads of that key
/// after that id); keys under the same next delimiter rolled up into one common prefix.
/// `scanned_all` false (the bucket held more uploads than were looked at) makes the page say
/// more may follow.
pub fn page_uploads(mut all: Vec<UploadEntry>, p: &UploadsParams, scanned_all: bool) -> UploadsPage {
    all.sort_by(|a, b| (&a.key, &a.id).cmp(&(&b.key, &b.id)));
    let max = p.max_uploads.min(UPLOADS_LISTED_MAX);
    let mut page = UploadsPage::default();
    let mut last: Option<(String, Option<String>)> = None;
    for u in all {
        if !u.key.starts_with(&p.prefix) {
            continue;
        }
        let passed = match (&p.key_marker, &p.upload_id_marker) {
            (Some(km), Some(im)) if !km.is_empty() => u.key < *km || (u.key == *km && u.id.as_str() <= im.as_str()),
            (Some(km), _) if !km.is_empty() => u.key <= *km,
            _ => false,
        };
        if passed {
            continue;
        }
        let rolled = p.delimiter.as_deref().filter(|d| !d.is_empty()).and_then(|d| {
            let rest = &u.key[p.prefix.len()..];
            rest.find(d).map(|i| format!("{}{}", p.prefix, &rest[..i + d.len()]))
        });
        if let Some(cp) = &rolled {
            if page.common_prefixes.last() == Some(cp) {
                continue;
            }
            // A prefix the marker already passed was listed on an earlier page.
            if p.key_marker.as_ref().is_some_and(|km| km.starts_with(cp.as_str())) {
                continue;
            }
        }
        if page.uploads.len() + page.common_prefixes.len() == max {
            page.is_truncated = true;
            break;
        }
        match rolled {
            Some(cp) => {
                last = Some((cp.clone(), None));
                page.common_prefixes.push(cp);
            }
            None => {
                last = Some((u.key.clone(), Some(u.id.as_str().to_string())));
                page.uploads.push(u);
            }
        }
    }
    if !scanned_all && !page.is_truncated && last.is_some() {
        page.is_truncated = true;
    }
    if page.is_truncated {
        if let Some((key, id)) = last {
            page.next_key_marker = Some(key);
            page.next_upload_id_marker = id;
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn stored(parts: &[(i32, u64, &str)]) -> BTreeMap<i32, StoredPart> {
        parts.iter().map(|&(n, size, etag)| (n, StoredPart { size, etag: etag.to_string(), path: format!("/u/part-{n:05}") })).collect()
    }

    fn named(parts: &[(i32, &str)]) -> Vec<NamedPart> {
        parts.iter().map(|&(number, etag)| NamedPart { number, etag: etag.to_string() }).collect()
    }

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";
    const C: &str = "4a8a08f09d37b73795649038408b5f33";

    #[test]
    fn ids_carry_their_age_and_key_and_nothing_else_parses() {
        let id = UploadId::new("b", "k/1", 1_700_000_000_123, 0xabc);
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id.unix_ms(), 1_700_000_000_123);
        assert_eq!(UploadId::parse("b", "k/1", id.as_str()), Some(id.clone()));
        assert!(id.is_for("b", "k/1") && !id.is_for("b", "k/2") && !id.is_for("c", "k/1"));
        assert_eq!(UploadId::parse("b", "k/2", id.as_str()), None, "another key's upload");
        for bad in ["", "../../etc", &id.as_str().to_uppercase(), &format!("{}/x", id.as_str()), &id.as_str()[1..]] {
            assert_eq!(UploadId::parse("b", "k/1", bad), None, "{bad:?}");
            assert_eq!(UploadId::from_dir_name(bad), None, "{bad:?}");
        }
        assert!(UploadId::new("b", "k", 2, 0) > UploadId::new("b", "k", 1, u64::MAX), "ids sort by age");
    }

    #[test]
    fn parts_are_numbered_one_to_ten_thousand() {
        assert_eq!(part_path("/u", 1, 0), Ok("/u/part-00001".into()));
        assert_eq!(part_path("/u", 10_000, PART_BYTES_MAX), Ok("/u/part-10000".into()));
        assert_eq!(part_path("/u", 0, 1), Err(PartError::NumberOutOfRange(0)));
        assert_eq!(part_path("/u", 10_001, 1), Err(PartError::NumberOutOfRange(10_001)));
        assert_eq!(part_path("/u", 2, PART_BYTES_MAX + 1), Err(PartError::TooLarge(PART_BYTES_MAX + 1)));
        assert_eq!(part_number("part-00042"), Some(42));
        for other in ["upload", "part-42", "part-00000", "part-10001", "part-0004x"] {
            assert_eq!(part_number(other), None, "{other}");
        }
    }

    #[test]
    fn a_completion_joins_the_named_parts_with_s3s_etag() {
        let s = stored(&[(1, 5 * MIB, A), (2, 6 * MIB, B), (3, 1, C), (4, 7 * MIB, A)]);
        let c = complete(&named(&[(1, A), (2, &format!("\"{B}\"")), (3, C)]), &s).unwrap();
        assert_eq!(c.files, vec!["/u/part-00001", "/u/part-00002", "/u/part-00003"]);
        assert_eq!(c.size, 11 * MIB + 1);
        // md5(md5("a") ++ md5("b") ++ md5("c")), as S3 computes it.
        let mut joined = Vec::new();
        for e in [A, B, C] {
            joined.extend_from_slice(&decode_md5(e).unwrap());
        }
        assert_eq!(c.etag, format!("{}-3", hex(&<md5::Md5 as md5::Digest>::digest(&joined))));
        assert_eq!(joined_etag(&named(&[(1, A), (2, B), (3, C)])), Some(c.etag.clone()), "what a retried completion is checked against");
        assert_eq!(joined_etag(&named(&[(1, "not-an-md5")])), None);
        // Parts may be skipped: 1 and 4.
        assert_eq!(complete(&named(&[(1, A), (4, A)]), &s).unwrap().files.len(), 2);
    }

    #[test]
    fn completions_s3_refuses_are_refused_with_its_codes() {
        let s = stored(&[(1, 5 * MIB, A), (2, 5 * MIB - 1, B), (3, 1, C), (4, 9, "not-an-md5")]);
        assert_eq!(complete(&[], &s), Err(CompletionError::NoParts));
        assert!(matches!(complete(&named(&[(2, B), (1, A)]), &s), Err(CompletionError::InvalidPartOrder { number: 1, after: 2 })));
        assert!(matches!(complete(&named(&[(1, A), (1, A)]), &s), Err(CompletionError::InvalidPartOrder { .. })));
        assert!(matches!(complete(&named(&[(1, A), (5, A)]), &s), Err(CompletionError::InvalidPart { number: 5, .. })));
        assert!(matches!(complete(&named(&[(1, B)]), &s), Err(CompletionError::InvalidPart { number: 1, .. })), "wrong ETag");
        assert!(matches!(complete(&named(&[(4, "not-an-md5")]), &s), Err(CompletionError::InvalidPart { number: 4, .. })));
        assert_eq!(complete(&named(&[(2, B), (3, C)]), &s), Err(CompletionError::EntityTooSmall { number: 2, size: 5 * MIB - 1 }));
        // The last part may be small; so may the only one.
        assert!(complete(&named(&[(1, A), (2, B)]), &s).is_ok());
        assert!(complete(&named(&[(3, C)]), &s).is_ok());
    }

    fn entries(list: &[(&str, u64)]) -> Vec<UploadEntry> {
        list.iter().map(|&(key, t)| UploadEntry { key: key.to_string(), id: UploadId::new("b", key, t, 0) }).collect()
    }

    #[test]
    fn uploads_are_listed_by_key_then_age_paged_and_rolled_up() {
        let all = entries(&[("b/2", 1), ("a", 5), ("b/1", 2), ("a", 3), ("c", 1), ("b/1", 1)]);
        let p = UploadsParams { max_uploads: 3, ..Default::default() };
        let first = page_uploads(all.clone(), &p, true);
        let keys: Vec<_> = first.uploads.iter().map(|u| (u.key.as_str(), u.id.unix_ms())).collect();
        assert_eq!(keys, vec![("a", 3), ("a", 5), ("b/1", 1)]);
        assert!(first.is_truncated);
        let next = UploadsParams { key_marker: first.next_key_marker.clone(), upload_id_marker: first.next_upload_id_marker.clone(), ..p.clone() };
        let second = page_uploads(all.clone(), &next, true);
        let keys: Vec<_> = second.uploads.iter().map(|u| (u.key.as_str(), u.id.unix_ms())).collect();
        assert_eq!(keys, vec![("b/1", 2), ("b/2", 1), ("c", 1)]);
        assert!(!second.is_truncated && second.next_key_marker.is_none());
        // A key marker alone skips every upload of that key.
        let after_a = page_uploads(all.clone(), &UploadsParams { key_marker: Some("a".into()), max_uploads: 10, ..Default::default() }, true);
        assert_eq!(after_a.uploads.len(), 4);
        let rolled = page_uploads(all.clone(), &UploadsParams { delimiter: Some("/".into()), max_uploads: 10, ..Default::default() }, true);
        assert_eq!(rolled.common_prefixes, vec!["b/".to_string()]);
        assert_eq!(rolled.uploads.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(), vec!["a", "a", "c"]);
        let under_b = page_uploads(all.clone(), &UploadsParams { prefix: "b/".into(), max_uploads: 10, ..Default::default() }, true);
        assert_eq!(under_b.uploads.len(), 3);
        // Not every upload looked at: the page says more may follow.
        assert!(page_uploads(all, &UploadsParams { max_uploads: 10, ..Default::default() }, false).is_truncated);
    }
}

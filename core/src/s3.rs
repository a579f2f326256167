//! The S3 gateway's decisions (`dfs s3`): which dfs path a bucket and a key name, and how a
//! bucket listing (ListObjects, ListObjectsV2) is cut from dfs's listings. Pure: the gateway
//! (`bins/src/s3.rs`) parses requests, checks signatures and moves bytes; what it asks of the
//! cluster and what it answers is decided here.
//!
//! ## Names
//! A bucket is a top-level directory, `/<bucket>`, named by S3's rules (3 to 63 lowercase
//! letters, digits, `-` and `.`, starting and ending with a letter or digit), so every bucket
//! name is a valid dfs name and no dfs-internal directory (`/.trash`) is a bucket. A key is the
//! path under it: `/<bucket>/<key>`. A key dfs cannot store as it is (an empty component, as in
//! `a//b`; a `.` or `..` component; a NUL byte) is refused, never rewritten, since a rewritten
//! key would list under another name. A key over S3's 1,024 bytes, or with a component over
//! dfs's 255, is too long. A key ending in `/` is a directory marker (what consoles make for
//! "folders"): it names the directory itself.
//!
//! ## Listings
//! `Listing` is a machine driven by pages of dfs's file listing (`ListFiles`: every file under
//! a directory, by full path, which is S3's key order under one bucket). It asks for pages
//! (`next_page`), is fed them (`feed`), and ends with S3's answer (`finish`):
//! - with a delimiter, keys under the same next delimiter roll up into one common prefix,
//!   and the listing skips past all of them in one step (one more page asked for at most),
//!   so a prefix over a million keys costs what one key does;
//! - a page of the answer holds at most `max_keys` entries (keys and common prefixes
//!   together, as S3 counts them), and says whether more follow; its continuation token is
//!   its last entry, and the next page starts past it;
//! - every page asked for either yields an entry or skips past one, so the pages one answer
//!   costs are bounded by `max_keys` plus a few.
//!
//! What S3 has and dfs has not: a key cannot also be a "directory" of other keys (`a` and
//! `a/b`), since a dfs path is a file or a directory, never both; such a PutObject is refused
//! with the conflict named.

pub mod multipart;

use crate::namespace::{NAME_MAX_BYTES, ROOT};

/// S3's longest key, in bytes.
pub const KEY_MAX_BYTES: usize = 1024;
/// Most entries in one page of a listing, and the default (S3's).
pub const LIST_KEYS_MAX: usize = 1000;
/// dfs listing pages asked for one S3 listing page at most: past it the page is cut short
/// (still correct: it says more follow). Keeps one request's work bounded whatever the data.
pub const LIST_PAGES_MAX: usize = 2 * LIST_KEYS_MAX + 16;
/// Past every string that starts with a common prefix: `prefix` + this sorts after them all
/// (a key holding U+10FFFF, a noncharacter, right after the prefix is still filtered out).
const PAST_PREFIX: char = '\u{10FFFF}';

/// Why a bucket name or key cannot name a dfs path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("bucket name {0:?} is not valid: 3 to 63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")]
    InvalidBucketName(String),
    #[error("key {key:?}: {reason}")]
    KeyTooLong { key: String, reason: String },
    #[error("key {key:?} cannot be stored by dfs as it is: {reason}")]
    InvalidKey { key: String, reason: String },
}

/// The directory a bucket is.
pub fn bucket_path(bucket: &str) -> Result<String, NameError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok =
        (3..=63).contains(&bucket.len()) && bucket.chars().all(ok_char) && edge(bucket.chars().next()) && edge(bucket.chars().last()) && !bucket.contains("..");
    if ok {
        Ok(format!("/{bucket}"))
    } else {
        Err(NameError::InvalidBucketName(crate::limits::echo(bucket)))
    }
}

/// What a key names under its bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectPath {
    /// A file: its full dfs path.
    File(String),
    /// A directory marker (`a/b/`): the directory's full dfs path.
    Dir(String),
}

/// The dfs path of `key` in `bucket`.
pub fn object_path(bucket: &str, key: &str) -> Result<ObjectPath, NameError> {
    let dir = bucket_path(bucket)?;
    let echo = || crate::limits::echo(key);
    let invalid = |reason: &str| NameError::InvalidKey { key: echo(), reason: reason.into() };
    if key.len() > KEY_MAX_BYTES {
        return Err(NameError::KeyTooLong { key: echo(), reason: format!("{} bytes, S3 allows {KEY_MAX_BYTES}", key.len()) });
    }
    if key.is_empty() {
        return Err(invalid("an empty key"));
    }
    if key.contains('\0') {
        return Err(invalid("a NUL byte"));
    }
    let (body, marker) = match key.strip_suffix('/') {
        Some(body) => (body, true),
        None => (key, false),
    };
    for component in body.split('/') {
        match component {
            "" => return Err(invalid("an empty path component (a leading '/', or '//')")),
            "." | ".." => return Err(invalid("a '.' or '..' path component")),
            c if c.len() > NAME_MAX_BYTES => {
                return Err(NameError::KeyTooLong { key: echo(), reason: format!("a path component of {} bytes, dfs allows {NAME_MAX_BYTES}", c.len()) });
            }
            _ => {}
        }
    }
    let path = format!("{dir}/{body}");
    Ok(if marker { ObjectPath::Dir(path) } else { ObjectPath::File(path) })
}

/// The key of the file at `path` in the bucket whose directory is `bucket_dir`, if it is in it.
pub fn key_of<'a>(bucket_dir: &str, path: &'a str) -> Option<&'a str> {
    path.strip_prefix(bucket_dir)?.strip_prefix('/').filter(|k| !k.is_empty())
}

/// What a listing asks for: one page of `ListFiles`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// The directory whose files (at any depth) are listed, by full path.
    pub dir: String,
    /// Only paths after this one.
    pub start_after: String,
    pub limit: u32,
}

/// The parameters of one S3 listing request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Only keys after this one (`start-after`, or V1's `marker`).
    pub start_after: Option<String>,
    /// Where the previous page ended: its last entry (V2's continuation token).
    pub continuation: Option<String>,
    pub max_keys: usize,
}

/// One page of an S3 listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage<T> {
    /// Keys, with what the caller fed along with each, in key order.
    pub contents: Vec<(String, T)>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// With `is_truncated`: the last entry, where the next page starts.
    pub next: Option<String>,
}

/// One S3 listing page in the making (see the module doc).
pub struct Listing<T> {
    bucket_dir: String,
    params: ListParams,
    /// `ListFiles` lists the files under this directory: the deepest one holding the prefix.
    list_dir: String,
    /// The next page starts after this full path.
    next_start: String,
    contents: Vec<(String, T)>,
    common_prefixes: Vec<String>,
    /// The last entry emitted (a key or a common prefix).
    last: Option<String>,
    pages: usize,
    /// Set once the answer is known.
    truncated: Option<bool>,
}

impl<T> Listing<T> {
    /// A listing of `bucket_dir` (from `bucket_path`). `max_keys` is capped at `LIST_KEYS_MAX`.
    pub fn new(bucket_dir: &str, mut params: ListParams) -> Self {
        params.max_keys = params.max_keys.min(LIST_KEYS_MAX);
        params.delimiter = params.delimiter.filter(|d| !d.is_empty());
        let prefix = &params.prefix;
        // Keys with the prefix lie in the directory its last '/' closes (or the bucket).
        let sub = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let list_dir = if sub.is_empty() { bucket_dir.to_string() } else { format!("{bucket_dir}/{sub}") };
        let full = |k: &str| format!("{bucket_dir}/{k}");
        // Start just before the prefix (dropping its last character leaves a string before
        // every key that has it), after start-after, and past the continuation's entry.
        let mut next_start = prefix.char_indices().last().map_or_else(String::new, |(i, _)| full(&prefix[..i]));
        if let Some(after) = &params.start_after {
            next_start = next_start.max(full(after));
        }
        if let Some(token) = &params.continuation {
            let past = match &params.delimiter {
                Some(d) if token.ends_with(d.as_str()) => format!("{}{PAST_PREFIX}", full(token)),
                _ => full(token),
            };
            next_start = next_start.max(past);
        }
        // A prefix that no storable key has (`a//`, `./`) lists nothing.
        let storable = crate::namespace::normalize_path(&list_dir).is_ok_and(|n| n == list_dir) || list_dir == ROOT;
        let truncated = (!storable || params.max_keys == 0).then_some(false);
        Listing {
            bucket_dir: bucket_dir.to_string(),
            params,
            list_dir,
            next_start,
            contents: Vec::new(),
            common_prefixes: Vec::new(),
            last: None,
            pages: 0,
            truncated,
        }
    }

    /// The next page of `ListFiles` to read, or `None` once the answer is known.
    pub fn next_page(&self) -> Option<PageRequest> {
        if self.truncated.is_some() {
            return None;
        }
        let room = self.params.max_keys - self.entries() + 1;
        Some(PageRequest { dir: self.list_dir.clone(), start_after: self.next_start.clone(), limit: room.clamp(1, LIST_KEYS_MAX) as u32 })
    }

    fn entries(&self) -> usize {
        self.contents.len() + self.common_prefixes.len()
    }

    /// One page of `ListFiles`: full paths in order, with what to keep of each, and whether
    /// more follow.
    pub fn feed(&mut self, page: impl IntoIterator<Item = (String, T)>, more: bool) {
        if self.truncated.is_some() {
            return;
        }
        self.pages += 1;
        let mut last_path = None;
        for (path, item) in page {
            if self.truncated.is_some() {
                return;
            }
            self.take(&path, item);
            last_path = Some(path);
        }
        if self.truncated.is_some() {
            return;
        }
        if let Some(path) = last_path {
            self.next_start = self.next_start.clone().max(path);
        }
        if !more {
            self.truncated = Some(false);
        } else if self.pages >= LIST_PAGES_MAX {
            // Cut short, still correct: the next page starts past the last entry.
            self.truncated = Some(self.last.is_some());
        }
    }

    fn take(&mut self, path: &str, item: T) {
        let Some(key) = key_of(&self.bucket_dir, path) else { return };
        let prefix = self.params.prefix.as_str();
        if !key.starts_with(prefix) {
            if key > prefix {
                // Past every key with the prefix: nothing more can match.
                self.truncated = Some(false);
            }
            return;
        }
        if self.params.start_after.as_deref().is_some_and(|after| key <= after) {
            return;
        }
        let entry = match &self.params.delimiter {
            Some(d) => key[prefix.len()..].find(d.as_str()).map(|i| &key[..prefix.len() + i + d.len()]),
            None => None,
        };
        let shown = entry.unwrap_or(key);
        if self.params.continuation.as_deref().is_some_and(|token| shown <= token) || self.last.as_deref() == Some(shown) {
            return;
        }
        if self.entries() == self.params.max_keys {
            // One more entry exists: this page is full and says so.
            self.truncated = Some(true);
            return;
        }
        match entry {
            Some(common) => {
                self.common_prefixes.push(common.to_string());
                // Skip the rest of it at once.
                self.next_start = self.next_start.clone().max(format!("{}/{common}{PAST_PREFIX}", self.bucket_dir));
            }
            None => self.contents.push((key.to_string(), item)),
        }
        self.last = Some(shown.to_string());
    }

    /// The answer, once `next_page` says no more pages are needed.
    pub fn finish(self) -> ListPage<T> {
        let is_truncated = self.truncated.unwrap_or(false);
        ListPage { contents: self.contents, common_prefixes: self.common_prefixes, is_truncated, next: self.last.filter(|_| is_truncated) }
    }
}

/// One ETag test of a conditional request (`If-Match`, `If-None-Match`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtagTest {
    /// `*`: any object.
    Any,
    /// An ETag, without quotes.
    Etag(String),
}

impl EtagTest {
    fn matches(&self, etag: &str) -> bool {
        match self {
            EtagTest::Any => true,
            EtagTest::Etag(e) => e == etag,
        }
    }
}

/// A read's conditional headers; times in whole seconds since the Unix epoch, as HTTP dates
/// carry them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub if_match: Option<EtagTest>,
    pub if_none_match: Option<EtagTest>,
    pub if_modified_since_s: Option<i64>,
    pub if_unmodified_since_s: Option<i64>,
}

/// What a conditional GET or HEAD answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// 304: the client's copy is current.
    NotModified,
    /// 412.
    PreconditionFailed,
}

/// RFC 9110's order, as S3 applies it: `If-Match` (or, without it, `If-Unmodified-Since`)
/// first, then `If-None-Match` (or, without it, `If-Modified-Since`).
pub fn evaluate(c: &Conditions, etag: &str, last_modified_s: i64) -> Verdict {
    match &c.if_match {
        Some(test) if !test.matches(etag) => return Verdict::PreconditionFailed,
        Some(_) => {}
        None if c.if_unmodified_since_s.is_some_and(|since| last_modified_s > since) => return Verdict::PreconditionFailed,
        None => {}
    }
    match &c.if_none_match {
        Some(test) if test.matches(etag) => Verdict::NotModified,
        Some(_) => Verdict::Proceed,
        None if c.if_modified_since_s.is_some_and(|since| last_modified_s <= since) => Verdict::NotModified,
        None => Verdict::Proceed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn bucket_names_follow_s3s_rules() {
        assert_eq!(bucket_path("my-bucket.1").unwrap(), "/my-bucket.1");
        for bad in ["ab", "Upper", "-lead", "trail-", ".trash", "a..b", "under_score", &"a".repeat(64), "sp ace", "é-bucket"] {
            assert!(matches!(bucket_path(bad), Err(NameError::InvalidBucketName(_))), "{bad}");
        }
    }

    #[test]
    fn keys_map_to_paths_or_are_refused_never_rewritten() {
        assert_eq!(object_path("bkt", "a/b.txt").unwrap(), ObjectPath::File("/bkt/a/b.txt".into()));
        assert_eq!(object_path("bkt", "a/b/").unwrap(), ObjectPath::Dir("/bkt/a/b".into()));
        assert_eq!(object_path("bkt", "sp ace/ünï").unwrap(), ObjectPath::File("/bkt/sp ace/ünï".into()));
        for bad in ["", "/lead", "a//b", "./a", "a/../b", "a/.", "nul\0", "/"] {
            assert!(matches!(object_path("bkt", bad), Err(NameError::InvalidKey { .. })), "{bad:?}");
        }
        assert!(matches!(object_path("bkt", &"k".repeat(KEY_MAX_BYTES + 1)), Err(NameError::KeyTooLong { .. })));
        assert!(matches!(object_path("bkt", &format!("a/{}", "n".repeat(256))), Err(NameError::KeyTooLong { .. })));
        object_path("bkt", &format!("a/{}", "n".repeat(255))).unwrap();
        assert!(matches!(object_path("B", "k"), Err(NameError::InvalidBucketName(_))));
        assert_eq!(key_of("/bkt", "/bkt/a/b"), Some("a/b"));
        assert_eq!(key_of("/bkt", "/bkt2/a"), None);
    }

    #[test]
    fn conditions_follow_rfc_9110s_order() {
        let e = |s: &str| Some(EtagTest::Etag(s.into()));
        let at = 1_000;
        let check = |c: Conditions| evaluate(&c, "abc", at);
        assert_eq!(check(Conditions::default()), Verdict::Proceed);
        assert_eq!(check(Conditions { if_match: e("abc"), ..Default::default() }), Verdict::Proceed);
        assert_eq!(check(Conditions { if_match: e("xyz"), ..Default::default() }), Verdict::PreconditionFailed);
        assert_eq!(check(Conditions { if_match: Some(EtagTest::Any), ..Default::default() }), Verdict::Proceed);
        // If-Match passing wins over If-Unmodified-Since failing.
        assert_eq!(check(Conditions { if_match: e("abc"), if_unmodified_since_s: Some(at - 1), ..Default::default() }), Verdict::Proceed);
        assert_eq!(check(Conditions { if_unmodified_since_s: Some(at - 1), ..Default::default() }), Verdict::PreconditionFailed);
        assert_eq!(check(Conditions { if_unmodified_since_s: Some(at), ..Default::default() }), Verdict::Proceed);
        assert_eq!(check(Conditions { if_none_match: e("abc"), ..Default::default() }), Verdict::NotModified);
        assert_eq!(check(Conditions { if_none_match: e("xyz"), if_modified_since_s: Some(at), ..Default::default() }), Verdict::Proceed);
        assert_eq!(check(Conditions { if_modified_since_s: Some(at), ..Default::default() }), Verdict::NotModified);
        assert_eq!(check(Conditions { if_modified_since_s: Some(at - 1), ..Default::default() }), Verdict::Proceed);
        assert_eq!(check(Conditions { if_match: e("xyz"), if_none_match: e("abc"), ..Default::default() }), Verdict::PreconditionFailed);
    }

    /// dfs's `ListFiles` over a set of file paths, as `Namespace::list` answers it.
    fn list_files(files: &BTreeSet<String>, r: &PageRequest) -> (Vec<(String, ())>, bool) {
        if files.contains(&r.dir) {
            return (if r.start_after.as_str() < r.dir.as_str() { vec![(r.dir.clone(), ())] } else { vec![] }, false);
        }
        let under = format!("{}/", r.dir);
        let mut matching = files.iter().filter(|p| p.starts_with(&under) && **p > r.start_after);
        let page: Vec<_> = matching.by_ref().take(r.limit as usize).map(|p| (p.clone(), ())).collect();
        (page, matching.next().is_some())
    }

    /// Every page of a listing, following continuation tokens to the end.
    fn list_all(files: &BTreeSet<String>, mut params: ListParams) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let mut pages = 0;
        loop {
            let mut listing = Listing::new("/bkt", params.clone());
            let mut asked = 0;
            while let Some(r) = listing.next_page() {
                asked += 1;
                assert!(asked <= LIST_PAGES_MAX, "unbounded");
                let (page, more) = list_files(files, &r);
                listing.feed(page, more);
            }
            let page = listing.finish();
            assert!(page.contents.len() + page.common_prefixes.len() <= params.max_keys.max(1));
            let mut entries: Vec<String> = page.contents.into_iter().map(|(k, ())| k).chain(page.common_prefixes).collect();
            entries.sort();
            out.extend(entries);
            pages += 1;
            assert!(pages < 10_000);
            match page.next {
                Some(next) if page.is_truncated => params.continuation = Some(next),
                _ => return (out, pages),
            }
        }
    }

    /// S3's answer, from the definition: keys with the prefix after start-after, rolled up at
    /// the delimiter, deduplicated, in order.
    fn model(keys: &BTreeSet<String>, p: &ListParams) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for k in keys.iter().filter(|k| k.starts_with(&p.prefix) && p.start_after.as_ref().is_none_or(|a| *k > a)) {
            let e = match &p.delimiter {
                Some(d) => k[p.prefix.len()..].find(d.as_str()).map_or(k.clone(), |i| k[..p.prefix.len() + i + d.len()].to_string()),
                None => k.clone(),
            };
            if out.last() != Some(&e) {
                out.push(e);
            }
        }
        out
    }

    /// Keys dfs can hold together: no key is a "directory" of another.
    fn storable(keys: Vec<String>) -> BTreeSet<String> {
        let mut kept: BTreeSet<String> = BTreeSet::new();
        for k in keys {
            let clash = kept.iter().any(|o| k.starts_with(&format!("{o}/")) || o.starts_with(&format!("{k}/")));
            if !clash {
                kept.insert(k);
            }
        }
        kept
    }

    #[test]
    fn a_delimiter_rolls_keys_up_in_s3_order() {
        let keys = storable(["a-b", "a/x", "a/y/z", "a.txt", "b", "photos/2024/1.jpg", "photos/2024/2.jpg", "photos/2025.zip"].map(String::from).to_vec());
        let files: BTreeSet<String> = keys.iter().map(|k| format!("/bkt/{k}")).collect();
        let p = ListParams { delimiter: Some("/".into()), max_keys: 1000, ..Default::default() };
        // '-' and '.' sort before '/': "a-b" and "a.txt" come before the prefix "a/".
        assert_eq!(list_all(&files, p.clone()).0, ["a-b", "a.txt", "a/", "b", "photos/"]);
        let p = ListParams { prefix: "photos/20".into(), ..p };
        assert_eq!(list_all(&files, p.clone()).0, ["photos/2024/", "photos/2025.zip"]);
        let one = ListParams { max_keys: 1, prefix: String::new(), ..p };
        assert_eq!(list_all(&files, one).0, ["a-b", "a.txt", "a/", "b", "photos/"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-s3.txt")))),
            ..ProptestConfig::default()
        })]
        /// Paged with any page size, any listing equals S3's definition, every page within
        /// its size, for keys around the delimiter's neighbours in byte order.
        #[test]
        fn listings_match_s3s_definition(
            keys in proptest::collection::vec(proptest::collection::vec(prop::sample::select(vec!["a", "a-", "a.b", "b", "0", "é"]), 1..4), 0..40),
            prefix in prop::sample::select(vec!["", "a", "a/", "a-", "b/a", "a/a/", "é", "a//"]),
            delimiter in prop::sample::select(vec![None, Some("/"), Some("-"), Some("a/")]),
            start_after in prop::option::of(prop::sample::select(vec!["a", "a/", "a.b/b", "b"])),
            max_keys in 0usize..6,
        ) {
            let keys = storable(keys.into_iter().map(|c| c.join("/")).collect());
            let files: BTreeSet<String> = keys.iter().map(|k| format!("/bkt/{k}")).collect();
            let params = ListParams {
                prefix: prefix.to_string(),
                delimiter: delimiter.map(String::from),
                start_after: start_after.map(String::from),
                continuation: None,
                max_keys,
            };
            let (got, pages) = list_all(&files, params.clone());
            if max_keys == 0 {
                prop_assert!(got.is_empty() && pages == 1);
            } else {
                prop_assert_eq!(got, model(&keys, &params));
            }
        }
    }
}

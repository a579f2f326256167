//! Multipart uploads and copies through the gateway. Where an upload's parts live and whether
//! a completion may go ahead is decided in `dfs_core::s3::multipart` (its module doc has the
//! layout); this carries it out with the dfs client.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use dfs_core::s3::multipart::{self as mp, CompletionError, NamedPart, PartError, StoredPart, UploadEntry, UploadId, UploadsParams};
use futures::StreamExt;

use super::*;

/// Uploads whose markers a ListMultipartUploads reads at once.
const MARKER_READS_IN_FLIGHT: usize = 16;

/// An upload in progress, found.
pub(super) struct Upload {
    dir: String,
    /// The marker: what the object will keep, and when the upload began.
    marker: proto::FileInfo,
}

/// The object file a multipart request's key names (a directory marker cannot be uploaded in
/// parts: it holds no bytes).
fn object_file(bucket: &str, key: &str) -> S3Result<String> {
    match rules::object_path(bucket, key).map_err(name_error)? {
        ObjectPath::File(p) => Ok(p),
        ObjectPath::Dir(_) => Err(s3_error!(InvalidArgument, "a key ending in '/' names a directory in dfs and cannot hold bytes")),
    }
}

fn part_error(e: PartError) -> S3Error {
    match e {
        PartError::NumberOutOfRange(_) => s3_error!(InvalidArgument, "{e}"),
        PartError::TooLarge(_) => s3_error!(EntityTooLarge, "{e}"),
    }
}

fn completion_error(e: CompletionError) -> S3Error {
    match e {
        CompletionError::NoParts => s3_error!(MalformedXML, "{e}"),
        CompletionError::InvalidPartOrder { .. } => s3_error!(InvalidPartOrder, "{e}"),
        CompletionError::InvalidPart { .. } => s3_error!(InvalidPart, "{e}"),
        CompletionError::EntityTooSmall { .. } => s3_error!(EntityTooSmall, "{e}"),
    }
}

/// A completion's answer: the object it made.
fn completed(i: &CompleteMultipartUploadInput, info: &proto::FileInfo) -> S3Response<CompleteMultipartUploadOutput> {
    S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(i.bucket.clone()),
        key: Some(i.key.clone()),
        e_tag: Some(ETag::Strong(etag_of(info))),
        location: Some(format!("/{}/{}", i.bucket, i.key)),
        ..Default::default()
    })
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The byte range of a copy's source (`x-amz-copy-source-range: bytes=first-last`).
fn copy_range(range: &Option<String>, size: u64) -> S3Result<(u64, u64)> {
    let Some(range) = range else { return Ok((0, size)) };
    // S3 takes only `bytes=first-last` here, both within the object (no suffix, no clamping).
    let bad = || s3_error!(InvalidArgument, "x-amz-copy-source-range {range:?} is not bytes=first-last");
    let (first, last) = range.strip_prefix("bytes=").and_then(|r| r.split_once('-')).ok_or_else(bad)?;
    let (first, last): (u64, u64) = (first.parse().map_err(|_| bad())?, last.parse().map_err(|_| bad())?);
    if first > last || last >= size {
        return Err(s3_error!(InvalidRange, "bytes {first}-{last} of a source object of {size} bytes"));
    }
    Ok((first, last + 1))
}

impl Gateway {
    /// The upload `id` of `key` in `bucket`, or NoSuchUpload (an id of another key's upload
    /// included).
    async fn upload(&self, bucket: &str, key: &str, id: &str) -> S3Result<Upload> {
        let id = UploadId::parse(bucket, key, id).ok_or_else(|| s3_error!(NoSuchUpload, "no upload {id:?} of this key"))?;
        let dir = mp::upload_dir(bucket, &id);
        match self.client.stat(&mp::marker_path(&dir)).await {
            Ok(reply) => Ok(Upload { dir, marker: reply.file.unwrap_or_default() }),
            Err(e) => Err(cluster_error(e, S3ErrorCode::NoSuchUpload)),
        }
    }

    /// The parts an upload's directory holds, by number.
    async fn stored_parts(&self, upload: &Upload) -> S3Result<BTreeMap<i32, (StoredPart, proto::FileInfo)>> {
        let files = self.client.list(&upload.dir).await.map_err(|e| cluster_error(e, S3ErrorCode::NoSuchUpload))?;
        Ok(files
            .into_iter()
            .filter_map(|f| {
                let number = mp::part_number(f.path.rsplit('/').next()?)?;
                let etag = f.object.as_ref().map(|o| o.etag.clone()).unwrap_or_default();
                Some((number, (StoredPart { size: f.size, etag, path: f.path.clone() }, f)))
            })
            .collect())
    }

    /// A part's body, stored; checks the upload is still there after, so that a part racing an
    /// abort or a completion is not left behind.
    async fn store_part(&self, upload: &Upload, path: &str, source: &StreamSource) -> S3Result<proto::FileInfo> {
        let info = self.store(path, source, proto::ObjectMeta::default()).await?;
        if self.client.stat(&mp::marker_path(&upload.dir)).await.is_err() {
            let _ = self.client.delete_now(&upload.dir, true).await;
            return Err(s3_error!(NoSuchUpload, "the upload was completed or aborted while this part was sent"));
        }
        Ok(info)
    }

    pub(super) async fn create_upload(&self, req: S3Request<CreateMultipartUploadInput>) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let target = object_file(&req.input.bucket, &req.input.key)?;
        self.allow(&req, "CreateMultipartUpload", Grant::Write, &target).await?;
        self.bucket_exists(&bucket_dir).await?;
        let i = &req.input;
        let object = object_meta!(i)?;
        let id = UploadId::new(&i.bucket, &i.key, now_unix_ms(), rand::random());
        let dir = mp::upload_dir(&i.bucket, &id);
        // The marker's bytes are the key (ListMultipartUploads reads them back).
        let key = Bytes::copy_from_slice(i.key.as_bytes());
        let source = StreamSource::new(key.len() as u64, futures::stream::once(async move { Ok(key) }).boxed());
        self.client.put_stream(&source, &mp::marker_path(&dir), false, object, &NoProgress).await.map_err(|e| cluster_error(e, S3ErrorCode::InternalError))?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            upload_id: Some(id.as_str().to_string()),
            ..Default::default()
        }))
    }

    pub(super) async fn put_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let target = object_file(&req.input.bucket, &req.input.key)?;
        self.allow(&req, "UploadPart", Grant::Write, &target).await?;
        let input = req.input;
        let upload = self.upload(&input.bucket, &input.key, &input.upload_id).await?;
        let size = body_size(input.content_length, &input.body)?;
        let path = mp::part_path(&upload.dir, input.part_number, size).map_err(part_error)?;
        let expect = expected(&input.content_md5, &input.checksum_sha256)?;
        let source = StreamSource::new(size, body_stream(input.body)).expecting(expect).standalone_chunks();
        let info = self.store_part(&upload, &path, &source).await?;
        let checksum = expect.sha256.map(|d| base64::engine::general_purpose::STANDARD.encode(d));
        Ok(S3Response::new(UploadPartOutput { e_tag: Some(ETag::Strong(etag_of(&info))), checksum_sha256: checksum, ..Default::default() }))
    }

    /// UploadPartCopy: a range of another object, read and stored as a part. Unlike
    /// CopyObject its bytes are copied: a part must have standalone chunk checksums, and a
    /// range rarely falls on chunk boundaries.
    pub(super) async fn copy_part(&self, req: S3Request<UploadPartCopyInput>) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let target = object_file(&req.input.bucket, &req.input.key)?;
        self.allow(&req, "UploadPartCopy", Grant::Write, &target).await?;
        let i = &req.input;
        let (source_path, head, reply) = self.copy_source(&req, &i.copy_source).await?;
        let conds = conditions(&i.copy_source_if_match, &i.copy_source_if_none_match, &i.copy_source_if_modified_since, &i.copy_source_if_unmodified_since);
        check_conditions(&conds, &head)?;
        let upload = self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        let (start, end) = copy_range(&i.copy_source_range, head.info.size)?;
        let path = mp::part_path(&upload.dir, i.part_number, end - start).map_err(part_error)?;
        let body = if end > start { self.read_stream(&source_path, reply, start, end).boxed() } else { futures::stream::empty().boxed() };
        let source = StreamSource::new(end - start, body).standalone_chunks();
        let info = self.store_part(&upload, &path, &source).await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag_of(&info))),
                last_modified: Some(timestamp(info.committed_unix_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn complete_upload(&self, req: S3Request<CompleteMultipartUploadInput>) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let target = object_file(&req.input.bucket, &req.input.key)?;
        self.allow(&req, "CompleteMultipartUpload", Grant::Write, &target).await?;
        let i = &req.input;
        let listed = i.multipart_upload.as_ref().and_then(|m| m.parts.as_ref()).map(Vec::as_slice).unwrap_or_default();
        let mut named = Vec::with_capacity(listed.len());
        for p in listed {
            let (Some(number), Some(etag)) = (p.part_number, p.e_tag.as_ref()) else {
                return Err(s3_error!(MalformedXML, "every part names its PartNumber and ETag"));
            };
            named.push(NamedPart { number, etag: etag.value().to_string() });
        }
        if named.len() > mp::PART_NUMBER_MAX as usize {
            return Err(s3_error!(MalformedXML, "at most {} parts", mp::PART_NUMBER_MAX));
        }
        let upload = match self.upload(&i.bucket, &i.key, &i.upload_id).await {
            Ok(upload) => upload,
            Err(e) if *e.code() == S3ErrorCode::NoSuchUpload => {
                // A completion retried after its answer was lost: the upload is gone, but the
                // object it made is there, with the ETag these parts make. Answered alike.
                let done = self.client.stat(&target).await.ok().and_then(|r| r.file).filter(|f| Some(etag_of(f)) == mp::joined_etag(&named));
                return done.map(|info| completed(i, &info)).ok_or(e);
            }
            Err(e) => return Err(e),
        };
        let stored: BTreeMap<i32, StoredPart> = self.stored_parts(&upload).await?.into_iter().map(|(n, (p, _))| (n, p)).collect();
        let completion = mp::complete(&named, &stored).map_err(completion_error)?;
        let object = proto::ObjectMeta { etag: completion.etag.clone(), ..upload.marker.object.clone().unwrap_or_default() };
        let info = self.client.copy_joined(&completion.files, &target, true, Some(object)).await.map_err(|e| cluster_error(e, S3ErrorCode::NoSuchUpload))?;
        // The object holds its chunks now; the parts left out and the marker go.
        if let Err(e) = self.client.delete_now(&upload.dir, true).await {
            tracing::warn!(dir = upload.dir, error = %e, "a completed upload's directory was not removed");
        }
        Ok(completed(i, &info))
    }

    pub(super) async fn abort_upload(&self, req: S3Request<AbortMultipartUploadInput>) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let target = object_file(&req.input.bucket, &req.input.key)?;
        self.allow(&req, "AbortMultipartUpload", Grant::Write, &target).await?;
        let i = &req.input;
        let upload = self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        // Its parts' chunks are collected with their files.
        self.client.delete_now(&upload.dir, true).await.map_err(|e| cluster_error(e, S3ErrorCode::NoSuchUpload))?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    pub(super) async fn parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let target = object_file(&req.input.bucket, &req.input.key)?;
        self.allow(&req, "ListParts", Grant::Read, &target).await?;
        let i = &req.input;
        let upload = self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        let max = match i.max_parts {
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-parts must not be negative")),
            Some(n) => (n as usize).min(mp::PARTS_LISTED_MAX),
            None => mp::PARTS_LISTED_MAX,
        };
        let after = i.part_number_marker.unwrap_or(0);
        let stored = self.stored_parts(&upload).await?;
        let mut parts: Vec<Part> = Vec::new();
        let mut truncated = false;
        for (number, (part, info)) in stored.range(after.saturating_add(1)..) {
            if parts.len() == max {
                truncated = true;
                break;
            }
            parts.push(Part {
                part_number: Some(*number),
                size: Some(part.size as i64),
                e_tag: Some(ETag::Strong(part.etag.clone())),
                last_modified: Some(timestamp(info.committed_unix_ms)),
                ..Default::default()
            });
        }
        let next = parts.last().and_then(|p| p.part_number).filter(|_| truncated);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            upload_id: Some(i.upload_id.clone()),
            max_parts: Some(max as i32),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(parts),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    pub(super) async fn uploads(&self, req: S3Request<ListMultipartUploadsInput>) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        self.allow(&req, "ListMultipartUploads", Grant::Read, &bucket_dir).await?;
        self.bucket_exists(&bucket_dir).await?;
        let i = &req.input;
        let max_uploads = match i.max_uploads {
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-uploads must not be negative")),
            Some(n) => n as usize,
            None => mp::UPLOADS_LISTED_MAX,
        };
        // The uploads' directories, oldest first (ids sort by age), at most UPLOADS_SCANNED_MAX.
        let uploads_dir = mp::bucket_uploads_dir(&i.bucket);
        let mut ids = Vec::new();
        let mut start_after = String::new();
        let scanned_all = loop {
            let request = proto::ListDirRequest { path: uploads_dir.clone(), recursive: false, start_after: start_after.clone(), limit: 1000 };
            let page = match self.meta.call(request).await {
                Ok(page) => page,
                Err(RpcError::NotFound(_)) => break true,
                Err(e) => return Err(cluster_error(ClientError::Metadata { context: "ListMultipartUploads".into(), source: e }, S3ErrorCode::NoSuchBucket)),
            };
            ids.extend(page.entries.iter().filter_map(|e| UploadId::from_dir_name(&e.name)));
            if ids.len() >= mp::UPLOADS_SCANNED_MAX {
                ids.truncate(mp::UPLOADS_SCANNED_MAX);
                break false;
            }
            match (page.truncated, page.entries.last()) {
                (true, Some(last)) => start_after = last.name.clone(),
                _ => break true,
            }
        };
        // Each marker's bytes are its key, checked against its id.
        let bucket = i.bucket.as_str();
        let reads = futures::stream::iter(ids)
            .map(|id| {
                let marker = mp::marker_path(&mp::upload_dir(bucket, &id));
                async move {
                    let mut key = Vec::new();
                    let read = self.client.read_range(&marker, 0, rules::KEY_MAX_BYTES as u64, &mut key, "ListMultipartUploads").await;
                    let key = String::from_utf8(key).ok().filter(|k| read.is_ok() && id.is_for(bucket, k))?;
                    Some(UploadEntry { key, id })
                }
            })
            .buffer_unordered(MARKER_READS_IN_FLIGHT);
        // A marker gone meanwhile (completed, aborted) or not yet written is no upload.
        let all: Vec<UploadEntry> = reads.filter_map(|e| async move { e }).collect().await;
        let params = UploadsParams {
            prefix: i.prefix.clone().unwrap_or_default(),
            delimiter: i.delimiter.clone(),
            key_marker: i.key_marker.clone(),
            upload_id_marker: i.upload_id_marker.clone(),
            max_uploads,
        };
        let page = mp::page_uploads(all, &params, scanned_all);
        let enc = encoder(&i.encoding_type);
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket.clone()),
            prefix: Some(enc(params.prefix)),
            delimiter: i.delimiter.clone().map(enc),
            key_marker: i.key_marker.clone().map(enc),
            upload_id_marker: i.upload_id_marker.clone(),
            max_uploads: Some(max_uploads.min(mp::UPLOADS_LISTED_MAX) as i32),
            is_truncated: Some(page.is_truncated),
            next_key_marker: page.next_key_marker.map(enc),
            next_upload_id_marker: page.next_upload_id_marker,
            encoding_type: i.encoding_type.clone(),
            uploads: Some(
                page.uploads
                    .into_iter()
                    .map(|u| MultipartUpload {
                        initiated: Some(timestamp(u.id.unix_ms())),
                        key: Some(enc(u.key)),
                        upload_id: Some(u.id.as_str().to_string()),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            common_prefixes: Some(page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            ..Default::default()
        }))
    }

    /// A copy's source object, opened (so that every byte read is of this version), with
    /// the caller's right to read it checked.
    async fn copy_source<T>(&self, req: &S3Request<T>, source: &CopySource) -> S3Result<(String, Head, proto::GetFileResponse)> {
        let CopySource::Bucket { bucket, key, .. } = source else {
            return Err(s3_error!(NotImplemented, "copies name their source as bucket/key"));
        };
        let bucket_dir = rules::bucket_path(bucket).map_err(name_error)?;
        let path = object_file(bucket, key)?;
        self.allow(req, "CopyObject", Grant::Read, &path).await?;
        match self.client.open(&path, "CopyObject").await {
            Ok(reply) => {
                let info = reply.file.clone().unwrap_or_default();
                let etag = etag_of(&info);
                Ok((path, Head { info, etag }, reply))
            }
            Err(e) => {
                self.head(&bucket_dir, &ObjectPath::File(path)).await?;
                Err(cluster_error(e, S3ErrorCode::NoSuchKey))
            }
        }
    }

    /// CopyObject: the new object shares the source's chunks (no byte moves). With
    /// `x-amz-metadata-directive: REPLACE` it gets the request's metadata (which is how an
    /// object's own metadata is changed: copied onto itself); otherwise the source's.
    pub(super) async fn copy(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let target = object_file(&req.input.bucket, &req.input.key)?;
        self.allow(&req, "CopyObject", Grant::Write, &target).await?;
        let i = &req.input;
        let (source_path, head, _) = self.copy_source(&req, &i.copy_source).await?;
        let conds = conditions(&i.copy_source_if_match, &i.copy_source_if_none_match, &i.copy_source_if_modified_since, &i.copy_source_if_unmodified_since);
        check_conditions(&conds, &head)?;
        self.bucket_exists(&bucket_dir).await?;
        let replace = i.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let object = if replace {
            let object = object_meta!(i)?;
            // The bytes are the source's, and so is their ETag.
            Some(proto::ObjectMeta { etag: head.etag.clone(), ..object })
        } else if source_path == target {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata"
            ));
        } else {
            None
        };
        let info = self.client.copy_joined(&[source_path], &target, true, object).await.map_err(|e| cluster_error(e, S3ErrorCode::NoSuchKey))?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag_of(&info))),
                last_modified: Some(timestamp(info.committed_unix_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// A copy whose source fails its conditions is refused with 412, whichever failed (S3 answers
/// no 304 to a copy).
fn check_conditions(c: &rules::Conditions, head: &Head) -> S3Result<()> {
    match rules::evaluate(c, &head.etag, (head.info.committed_unix_ms / 1000) as i64) {
        Verdict::Proceed => Ok(()),
        Verdict::NotModified | Verdict::PreconditionFailed => Err(s3_error!(PreconditionFailed, "the copy's source fails its conditions")),
    }
}

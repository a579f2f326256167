"""boto3 against `dfs s3`: what real_s3.rs runs. Every check raises on failure (exit 1).

argv: ENDPOINT ADMIN_KEY ADMIN_SECRET READ_KEY READ_SECRET WORK_DIR
"""
import base64
import concurrent.futures
import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request

import boto3
import botocore
from botocore.config import Config

endpoint, admin_key, admin_secret, read_key, read_secret, work = sys.argv[1:7]


def client(key, secret):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


s3 = client(admin_key, admin_secret)
reader = client(read_key, read_secret)


def error_code(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{call.__name__} succeeded, expected an error")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def data(n, seed):
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


s3.create_bucket(Bucket="photos")
check(error_code(s3.create_bucket, Bucket="photos")[0] == "BucketAlreadyOwnedByYou", "a bucket made twice")
check("photos" in [b["Name"] for b in s3.list_buckets()["Buckets"]], "ListBuckets shows it")
s3.head_bucket(Bucket="photos")
check(error_code(s3.head_bucket, Bucket="nothere")[1] == 404, "HeadBucket of a missing bucket: 404")

# Objects of 0 bytes, of a few, and of several chunks (4 MiB each), with metadata.
sizes = {"empty": 0, "small.txt": 11, "dir/big.bin": 9 * 1024 * 1024 + 17}
for i, (key, n) in enumerate(sizes.items()):
    body = data(n, i)
    put = s3.put_object(Bucket="photos", Key=key, Body=body, ContentType="application/x-test", Metadata={"owner": "alice", "n": str(n)})
    check(put["ETag"] == '"%s"' % hashlib.md5(body).hexdigest(), f"{key}: ETag is the MD5 of its {n} bytes")
    got = s3.get_object(Bucket="photos", Key=key)
    check(got["Body"].read() == body, f"{key}: read back whole")
    check(got["ContentType"] == "application/x-test" and got["Metadata"] == {"owner": "alice", "n": str(n)}, f"{key}: content type and metadata kept")
    head = s3.head_object(Bucket="photos", Key=key)
    check(head["ContentLength"] == n and head["ETag"] == put["ETag"], f"{key}: HEAD agrees")

big = data(sizes["dir/big.bin"], 2)
for first, last in [(0, 0), (100, 4 * 1024 * 1024 + 99), (4 * 1024 * 1024 - 1, 4 * 1024 * 1024), (len(big) - 10, len(big) - 1)]:
    got = s3.get_object(Bucket="photos", Key="dir/big.bin", Range=f"bytes={first}-{last}")
    check(got["Body"].read() == big[first : last + 1] and got["ContentRange"] == f"bytes {first}-{last}/{len(big)}", f"range {first}-{last}")
got = s3.get_object(Bucket="photos", Key="dir/big.bin", Range="bytes=-5")
check(got["Body"].read() == big[-5:], "a suffix range")
check(error_code(s3.get_object, Bucket="photos", Key="dir/big.bin", Range=f"bytes={len(big)}-")[0] == "InvalidRange", "a range past the end: InvalidRange")

# Conditional reads.
etag = s3.head_object(Bucket="photos", Key="small.txt")["ETag"]
check(error_code(s3.get_object, Bucket="photos", Key="small.txt", IfNoneMatch=etag)[1] == 304, "If-None-Match with its ETag: 304")
check(error_code(s3.get_object, Bucket="photos", Key="small.txt", IfMatch='"0000"')[1] == 412, "If-Match with another ETag: 412")
check(s3.get_object(Bucket="photos", Key="small.txt", IfMatch=etag)["Body"].read() == data(11, 1), "If-Match with its ETag: 200")

# Checksums: SHA-256 verified on put and returned from what dfs records; a wrong MD5 refused.
body = data(5000, 9)
sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
s3.put_object(Bucket="photos", Key="summed", Body=body, ChecksumSHA256=sha)
check(s3.head_object(Bucket="photos", Key="summed", ChecksumMode="ENABLED").get("ChecksumSHA256") == sha, "x-amz-checksum-sha256 returned")
wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
check(error_code(s3.put_object, Bucket="photos", Key="badsum", Body=body, ChecksumSHA256=wrong)[0] in ("BadDigest", "XAmzContentChecksumMismatch"), "a wrong SHA-256 refused")
bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
check(error_code(s3.put_object, Bucket="photos", Key="badmd5", Body=body, ContentMD5=bad_md5)[0] == "BadDigest", "a wrong Content-MD5 refused")
check(error_code(s3.head_object, Bucket="photos", Key="badmd5")[1] == 404, "and nothing stored under that key")

# Listing 2,500 keys: pagination and delimiters.
keys = [f"many/{i // 100:02d}/k{i:04d}" for i in range(2500)]
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda k: s3.put_object(Bucket="photos", Key=k, Body=k.encode()), keys))
pages = s3.get_paginator("list_objects_v2").paginate(Bucket="photos", Prefix="many/", PaginationConfig={"PageSize": 700})
listed = [o["Key"] for page in pages for o in page.get("Contents", [])]
check(listed == sorted(keys), f"ListObjectsV2 pages through {len(listed)} keys in order")
v1 = s3.get_paginator("list_objects").paginate(Bucket="photos", Prefix="many/", PaginationConfig={"PageSize": 1000})
check([o["Key"] for page in v1 for o in page.get("Contents", [])] == sorted(keys), "ListObjects (v1) pages through them too")
top = s3.list_objects_v2(Bucket="photos", Delimiter="/")
check([p["Prefix"] for p in top["CommonPrefixes"]] == ["dir/", "many/"], "common prefixes at the top")
check([o["Key"] for o in top["Contents"]] == ["empty", "small.txt", "summed"], "keys at the top")
dirs = s3.list_objects_v2(Bucket="photos", Prefix="many/", Delimiter="/", MaxKeys=10)
check(len(dirs["CommonPrefixes"]) == 10 and dirs["IsTruncated"], "a page of 10 common prefixes, truncated")
rest = s3.list_objects_v2(Bucket="photos", Prefix="many/", Delimiter="/", ContinuationToken=dirs["NextContinuationToken"])
check(len(rest["CommonPrefixes"]) == 15 and not rest["IsTruncated"], "the other 15 on the next page")
after = s3.list_objects_v2(Bucket="photos", Prefix="many/24/", StartAfter="many/24/k2490")
check([o["Key"] for o in after["Contents"]] == [f"many/24/k{i}" for i in range(2491, 2500)], "start-after")

# Deleting: one, many, and a bucket only once empty.
s3.delete_object(Bucket="photos", Key="empty")
check(error_code(s3.get_object, Bucket="photos", Key="empty")[0] == "NoSuchKey", "a deleted key: NoSuchKey")
s3.delete_object(Bucket="photos", Key="empty")  # idempotent
gone = s3.delete_objects(Bucket="photos", Delete={"Objects": [{"Key": k} for k in keys[:500]]})
check(len(gone.get("Deleted", [])) == 500 and not gone.get("Errors"), "DeleteObjects of 500 keys")
check(s3.list_objects_v2(Bucket="photos", Prefix="many/00/", MaxKeys=5).get("KeyCount") == 0, "they are gone")
check(error_code(s3.delete_bucket, Bucket="photos")[0] == "BucketNotEmpty", "a bucket with keys: BucketNotEmpty")

# Errors clients act on.
check(error_code(s3.get_object, Bucket="nothere", Key="k")[0] == "NoSuchBucket", "NoSuchBucket")
check(error_code(s3.put_object, Bucket="photos", Key="k" * 1025, Body=b"x")[0] == "KeyTooLongError", "KeyTooLongError")
check(error_code(s3.put_object, Bucket="photos", Key="a//b", Body=b"x")[0] == "InvalidArgument", "a key dfs cannot store: refused, not rewritten")
check(error_code(s3.create_bucket, Bucket="no_underscores")[0] == "InvalidBucketName", "InvalidBucketName")
check(error_code(client(admin_key, "x" * 40).list_buckets)[0] == "SignatureDoesNotMatch", "a wrong secret: SignatureDoesNotMatch")
check(error_code(client("DFSK0000000000000001", "x" * 40).list_buckets)[0] == "InvalidAccessKeyId", "an unknown key: InvalidAccessKeyId")
check(reader.get_object(Bucket="photos", Key="small.txt")["Body"].read() == data(11, 1), "a read key reads")
check(error_code(reader.put_object, Bucket="photos", Key="x", Body=b"x")[0] == "AccessDenied", "a read key cannot write")
check(error_code(reader.delete_object, Bucket="photos", Key="small.txt")[0] == "AccessDenied", "nor delete")

# A presigned URL, fetched by curl: no credentials of its own.
url = s3.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "dir/big.bin"}, ExpiresIn=300)
# The gateway's certificate is from the cluster CA, which boto3 has from AWS_CA_BUNDLE.
curl = ["curl", "--cacert", os.environ["AWS_CA_BUNDLE"]] if os.environ.get("AWS_CA_BUNDLE") else ["curl"]
out = subprocess.run(curl + ["-sf", url], capture_output=True, check=True).stdout
check(out == big, "a presigned GET through curl")
tampered = url.replace("dir/big.bin", "small.txt")
check(subprocess.run(curl + ["-s", "-o", "/dev/null", "-w", "%{http_code}", tampered], capture_output=True).stdout == b"403", "a presigned URL for another key: 403")


# Multipart: 5 parts of sizes S3 allows (over 5 MiB by odd amounts, the last small), sent out of
# order, one of them twice (the second replaces the first).
MIB = 1024 * 1024


def md5_hex(b):
    return hashlib.md5(b).hexdigest()


part_sizes = [5 * MIB + 1, 5 * MIB + 4097, 6 * MIB - 3, 5 * MIB, 1234]
parts = [data(n, 100 + i) for i, n in enumerate(part_sizes)]
whole = b"".join(parts)
mpu = s3.create_multipart_upload(Bucket="photos", Key="multi/obj.bin", ContentType="video/x-test", Metadata={"kind": "multipart"})
uid = mpu["UploadId"]
code = error_code(s3.upload_part, Bucket="photos", Key="multi/other", UploadId=uid, PartNumber=1, Body=b"x")[0]
check(code == "NoSuchUpload", "an upload id used with another key: NoSuchUpload")
check(error_code(s3.upload_part, Bucket="photos", Key="multi/obj.bin", UploadId=uid, PartNumber=10001, Body=b"x")[0] == "InvalidArgument", "part 10001: refused")
s3.upload_part(Bucket="photos", Key="multi/obj.bin", UploadId=uid, PartNumber=3, Body=b"replaced later")
etags = {}
for i in [2, 0, 4, 1, 3]:
    r = s3.upload_part(Bucket="photos", Key="multi/obj.bin", UploadId=uid, PartNumber=i + 1, Body=parts[i])
    check(r["ETag"] == '"%s"' % md5_hex(parts[i]), f"part {i + 1}: its ETag is its MD5")
    etags[i + 1] = r["ETag"]
listed = s3.list_parts(Bucket="photos", Key="multi/obj.bin", UploadId=uid)
check([(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == [(n, part_sizes[n - 1], etags[n]) for n in range(1, 6)], "ListParts: each part's number, size and ETag")
page = s3.list_parts(Bucket="photos", Key="multi/obj.bin", UploadId=uid, MaxParts=2, PartNumberMarker=1)
check([p["PartNumber"] for p in page["Parts"]] == [2, 3] and page["IsTruncated"] and page["NextPartNumberMarker"] == 3, "ListParts paged")
uploads = s3.list_multipart_uploads(Bucket="photos").get("Uploads", [])
check([(u["Key"], u["UploadId"]) for u in uploads] == [("multi/obj.bin", uid)], "ListMultipartUploads shows it")
check(error_code(s3.head_object, Bucket="photos", Key="multi/obj.bin")[1] == 404, "nothing visible before the completion")


def complete(bucket, key, upload_id, numbers, etag_of=lambda n: etags[n]):
    return s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag_of(n)} for n in numbers]}
    )


check(error_code(complete, "photos", "multi/obj.bin", uid, [2, 1])[0] == "InvalidPartOrder", "parts out of order: InvalidPartOrder")
check(error_code(complete, "photos", "multi/obj.bin", uid, [1, 2], lambda n: '"%s"' % md5_hex(b"other"))[0] == "InvalidPart", "a wrong ETag: InvalidPart")
check(error_code(complete, "photos", "multi/obj.bin", uid, [1, 6], lambda n: etags.get(n, etags[1]))[0] == "InvalidPart", "a part never uploaded: InvalidPart")
done = complete("photos", "multi/obj.bin", uid, [1, 2, 3, 4, 5])
multipart_etag = '"%s-5"' % hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
check(done["ETag"] == multipart_etag, "the object's ETag is S3's MD5 of the parts' MD5s, -5")
check(complete("photos", "multi/obj.bin", uid, [1, 2, 3, 4, 5])["ETag"] == multipart_etag, "a completion retried after the first: answered alike")
got = s3.get_object(Bucket="photos", Key="multi/obj.bin")
check(got["Body"].read() == whole and got["ETag"] == multipart_etag, "the object reads back whole")
check(got["ContentType"] == "video/x-test" and got["Metadata"] == {"kind": "multipart"}, "with what CreateMultipartUpload gave it")
for first, last in [(5 * MIB - 10, 5 * MIB + 10), (4 * MIB - 1, 9 * MIB + 7), (len(whole) - 1300, len(whole) - 1)]:
    r = s3.get_object(Bucket="photos", Key="multi/obj.bin", Range=f"bytes={first}-{last}")
    check(r["Body"].read() == whole[first : last + 1], f"a range across parts, {first}-{last}")
check(error_code(s3.list_parts, Bucket="photos", Key="multi/obj.bin", UploadId=uid)[0] == "NoSuchUpload", "a completed upload is gone")
check(s3.list_multipart_uploads(Bucket="photos").get("Uploads", []) == [], "and no longer listed")
with open(f"{work}/multi.bin", "wb") as f:
    f.write(whole)

# An aborted upload: gone, its parts with it.
aborted = s3.create_multipart_upload(Bucket="photos", Key="multi/aborted")["UploadId"]
s3.upload_part(Bucket="photos", Key="multi/aborted", UploadId=aborted, PartNumber=1, Body=data(5 * MIB, 7))
s3.abort_multipart_upload(Bucket="photos", Key="multi/aborted", UploadId=aborted)
check(error_code(s3.upload_part, Bucket="photos", Key="multi/aborted", UploadId=aborted, PartNumber=2, Body=b"x")[0] == "NoSuchUpload", "an aborted upload takes no part")
check(error_code(s3.head_object, Bucket="photos", Key="multi/aborted")[1] == 404, "an aborted upload leaves no object")
check(s3.list_multipart_uploads(Bucket="photos").get("Uploads", []) == [], "nor an upload listed")
small = s3.create_multipart_upload(Bucket="photos", Key="multi/small")["UploadId"]
e1 = s3.upload_part(Bucket="photos", Key="multi/small", UploadId=small, PartNumber=1, Body=b"tiny")["ETag"]
e2 = s3.upload_part(Bucket="photos", Key="multi/small", UploadId=small, PartNumber=2, Body=b"tail")["ETag"]
code = error_code(complete, "photos", "multi/small", small, [1, 2], lambda n: {1: e1, 2: e2}[n])[0]
check(code == "EntityTooSmall", "a part under 5 MiB before the last: EntityTooSmall")
s3.abort_multipart_upload(Bucket="photos", Key="multi/small", UploadId=small)

# CopyObject: no byte moves; COPY keeps the metadata, REPLACE sets it (on the object itself too).
s3.create_bucket(Bucket="copies")
c = s3.copy_object(Bucket="copies", Key="obj", CopySource={"Bucket": "photos", "Key": "multi/obj.bin"})
check(c["CopyObjectResult"]["ETag"] == multipart_etag, "a copy has its source's ETag")
got = s3.get_object(Bucket="copies", Key="obj")
check(got["Body"].read() == whole and got["Metadata"] == {"kind": "multipart"}, "a copy across buckets reads the same, metadata kept")
s3.copy_object(Bucket="photos", Key="small.txt", CopySource={"Bucket": "photos", "Key": "small.txt"}, MetadataDirective="REPLACE", ContentType="text/plain", Metadata={"v": "2"})
head = s3.head_object(Bucket="photos", Key="small.txt")
check(head["ContentType"] == "text/plain" and head["Metadata"] == {"v": "2"} and head["ETag"] == '"%s"' % md5_hex(data(11, 1)), "REPLACE onto itself: new metadata, same ETag")
check(s3.get_object(Bucket="photos", Key="small.txt")["Body"].read() == data(11, 1), "and the same bytes")
code = error_code(s3.copy_object, Bucket="photos", Key="small.txt", CopySource={"Bucket": "photos", "Key": "small.txt"})[0]
check(code == "InvalidRequest", "a copy onto itself changing nothing: InvalidRequest")
check(error_code(s3.copy_object, Bucket="copies", Key="x", CopySource={"Bucket": "photos", "Key": "nope"})[0] == "NoSuchKey", "a copy of a missing key: NoSuchKey")
code = error_code(s3.copy_object, Bucket="copies", Key="x", CopySource={"Bucket": "photos", "Key": "small.txt"}, CopySourceIfMatch='"0000"')[1]
check(code == 412, "a copy whose source fails x-amz-copy-source-if-match: 412")
check(error_code(reader.copy_object, Bucket="copies", Key="x", CopySource={"Bucket": "photos", "Key": "small.txt"})[0] == "AccessDenied", "a read key cannot copy")

# UploadPartCopy: an object put together from ranges of another.
asm = s3.create_multipart_upload(Bucket="copies", Key="assembled")["UploadId"]
cut = 5 * MIB + 3
p1 = s3.upload_part_copy(Bucket="copies", Key="assembled", UploadId=asm, PartNumber=1, CopySource={"Bucket": "photos", "Key": "multi/obj.bin"}, CopySourceRange=f"bytes=0-{cut - 1}")
p2 = s3.upload_part_copy(
    Bucket="copies", Key="assembled", UploadId=asm, PartNumber=2, CopySource={"Bucket": "photos", "Key": "multi/obj.bin"}, CopySourceRange=f"bytes={cut}-{len(whole) - 1}"
)
tags = {1: p1["CopyPartResult"]["ETag"], 2: p2["CopyPartResult"]["ETag"]}
complete("copies", "assembled", asm, [1, 2], lambda n: tags[n])
check(s3.get_object(Bucket="copies", Key="assembled")["Body"].read() == whole, "UploadPartCopy: ranges of another object, joined")

# For real_s3.rs: a presigned PUT it starts and cuts off mid-body.
with open(f"{work}/put_url", "w") as f:
    f.write(s3.generate_presigned_url("put_object", Params={"Bucket": "photos", "Key": "cut/short"}, ExpiresIn=600))
print("boto3: all checks passed")

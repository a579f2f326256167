# One PutObject and one GetObject of a file through the gateway, timed (scripts/s3-bench/run.sh).
import sys, time, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
endpoint, key, secret, src, dst = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket="big")
except Exception:
    pass
one = TransferConfig(multipart_threshold=1 << 40, max_concurrency=1)
t = time.time(); s3.upload_file(src, "big", "f", Config=one); put = time.time() - t
t = time.time(); s3.download_file("big", "f", dst, Config=one); get = time.time() - t
print(f"gateway (boto3): put {put:.2f}s get {get:.2f}s")

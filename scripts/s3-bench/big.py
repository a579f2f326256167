# PutObject and GetObject of a file through the gateway, timed (scripts/s3-bench/run.sh): one
# stream each way ("single"), or boto3's defaults ("multipart": 8 MiB parts, 10 at once, and
# ranged gets as many).
import sys, time, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
endpoint, key, secret, src, dst = sys.argv[1:6]
mode = sys.argv[6] if len(sys.argv) > 6 else "single"
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket="big")
except Exception:
    pass
config = TransferConfig(multipart_threshold=1 << 40, max_concurrency=1) if mode == "single" else TransferConfig()
t = time.time(); s3.upload_file(src, "big", "f", Config=config); put = time.time() - t
t = time.time(); s3.download_file("big", "f", dst, Config=config); get = time.time() - t
print(f"gateway (boto3, {mode}): put {put:.2f}s get {get:.2f}s")

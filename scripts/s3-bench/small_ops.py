# 4 KiB PutObject and GetObject through the gateway at a given concurrency (scripts/s3-bench/run.sh).
import sys, time, concurrent.futures, boto3
from botocore.config import Config
endpoint, key, secret, n, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=conc * 2))
try:
    s3.create_bucket(Bucket="small")
except Exception:
    pass
body = bytes(4096)
keys = [f"k/{i:06d}" for i in range(n)]
with concurrent.futures.ThreadPoolExecutor(conc) as pool:
    list(pool.map(lambda k: s3.put_object(Bucket="small", Key="warm/" + k, Body=body), keys[:200]))
    t = time.time(); list(pool.map(lambda k: s3.put_object(Bucket="small", Key=k, Body=body), keys)); put = time.time() - t
    t = time.time(); list(pool.map(lambda k: s3.get_object(Bucket="small", Key=k)["Body"].read(), keys)); get = time.time() - t
print(f"4 KiB PutObject: {n/put:.0f}/s, GetObject: {n/get:.0f}/s at concurrency {conc} ({n} each)")

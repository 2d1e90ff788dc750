#!/usr/bin/env python3
"""The testbed's S3 client (boto3, Debian's python3-boto3), used by the stand-in console
in the ui pod, by the blob store's readiness probe and by tests/testbed/verify.

  s3tool.py ready BUCKET...            every bucket answers with these credentials
  s3tool.py import FILE BUCKET         upload every file of the tar.gz FILE under its
                                       archive path (dist/..., artifact/...), as the
                                       vendor's import writes the blob storage
  s3tool.py hashes BUCKET              JSON {key: [size, sha256]} of every object
  s3tool.py sha256 BUCKET KEY          one object's sha256 (exit 1: no such key)

Environment: S3_ENDPOINT (path-style), S3_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY. Test switch: /run/testbed-switches/import-skip-one makes
`import` leave out the first file (the object-store proof must then fail).
"""
import hashlib
import json
import os
import sys
import tarfile

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

SKIP_SWITCH = "/run/testbed-switches/import-skip-one"
# Files above 8 MiB go up in parts, as real importers do: their ETag is not an MD5.
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20,
                          use_threads=False)


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("S3_ENDPOINT", "http://127.0.0.1:9000"),
        region_name=os.environ.get("S3_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries={"max_attempts": 3}))


def ready(buckets):
    s3 = client()
    for b in buckets:
        s3.head_bucket(Bucket=b)
    return 0


class ReadOnly:
    """A tar member as a plain, non-seekable reader (what s3transfer expects of one)."""

    def __init__(self, f):
        self.f = f

    def read(self, n=-1):
        return self.f.read(n)

    def seekable(self):
        return False


def import_tar(path, bucket):
    s3 = client()
    skip = os.path.exists(SKIP_SWITCH)
    count = 0
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key = member.name[2:] if member.name.startswith("./") else member.name
            if not (key.startswith("dist/") or key.startswith("artifact/")):
                continue
            if skip:
                skip = False
                print(f"console: test switch: leaving out {key}", file=sys.stderr)
                continue
            s3.upload_fileobj(ReadOnly(tar.extractfile(member)), bucket, key, Config=TRANSFER)
            count += 1
    print(f"Uploaded {count} files to bucket {bucket}")
    return 0


def hashes(bucket):
    s3 = client()
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
            h = hashlib.sha256()
            for chunk in iter(lambda: body.read(1 << 20), b""):
                h.update(chunk)
            out[obj["Key"]] = [obj["Size"], h.hexdigest()]
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


def sha256(bucket, key):
    # One object's sha256, or exit 1 (nothing printed) when the bucket has no such key.
    s3 = client()
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except s3.exceptions.NoSuchKey:
        return 1
    h = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    print(h.hexdigest())
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "ready":
        return ready(argv[1:])
    if len(argv) == 3 and argv[0] == "import":
        return import_tar(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "hashes":
        return hashes(argv[1])
    if len(argv) == 3 and argv[0] == "sha256":
        return sha256(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as e:  # a clear one-line reason for the console's caller
        print(f"s3tool: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

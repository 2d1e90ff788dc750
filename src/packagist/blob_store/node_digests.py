# ferry's bucket digests on the new host (blob_store via = "host"): list the bucket and
# hash every object where the store is, so the proof of the storage import does not
# pull every byte back through the operator's link. Python's standard library only:
# S3 ListObjectsV2 and GET, path-style, signed with AWS Signature V4.
#
#   python3 -c SCRIPT < {"endpoint", "bucket", "region", "access_key", "secret_key"}
#
# Prints one JSON line per object: {"key": …, "size": N, "sha256": hex}. The settings
# (with the credentials) come on stdin, never in an argv.
import datetime
import hashlib
import hmac
import http.client
import json
import ssl
import sys
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY = hashlib.sha256(b"").hexdigest()
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def quote(s):
    return urllib.parse.quote(s, safe="-_.~")


class S3:
    def __init__(self, cfg):
        url = urllib.parse.urlsplit(cfg["endpoint"])
        self.host = url.netloc
        self.base = url.path.rstrip("/")
        self.bucket, self.region = cfg["bucket"], cfg["region"]
        self.ak, self.sk = cfg["access_key"], cfg["secret_key"]
        if url.scheme == "https":
            self.conn = http.client.HTTPSConnection(self.host, context=ssl.create_default_context(), timeout=300)
        else:
            self.conn = http.client.HTTPConnection(self.host, timeout=300)

    def request(self, path, query):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        uri = self.base + path
        q = "&".join("%s=%s" % (quote(k), quote(v)) for k, v in sorted(query.items()))
        headers = {"host": self.host, "x-amz-content-sha256": EMPTY, "x-amz-date": amz}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(["GET", uri, q, "".join("%s:%s\n" % (k, headers[k]) for k in sorted(headers)), signed, EMPTY])
        scope = "%s/%s/s3/aws4_request" % (day, self.region)
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.sk).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (self.ak, scope, signed, sig)
        self.conn.request("GET", uri + ("?" + q if q else ""), headers=headers)
        resp = self.conn.getresponse()
        if resp.status != 200:
            body = resp.read(2000).decode("utf-8", "replace")
            sys.stderr.write("GET %s: HTTP %d %s\n" % (uri, resp.status, body))
            sys.exit(2)
        return resp

    def keys(self):
        token = None
        while True:
            query = {"list-type": "2"}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self.request("/" + quote(self.bucket), query).read())
            for item in root.iter(NS + "Contents"):
                yield item.find(NS + "Key").text
            if (root.findtext(NS + "IsTruncated") or "false") != "true":
                return
            token = root.findtext(NS + "NextContinuationToken")

    def digest(self, key):
        resp = self.request("/" + quote(self.bucket) + "/" + "/".join(quote(p) for p in key.split("/")), {})
        h, size = hashlib.sha256(), 0
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            h.update(chunk)
        return size, h.hexdigest()


def main():
    s3 = S3(json.load(sys.stdin))
    for key in list(s3.keys()):
        size, sha = s3.digest(key)
        sys.stdout.write(json.dumps({"key": key, "size": size, "sha256": sha}) + "\n")


main()

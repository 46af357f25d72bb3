"""A real S3-compatible server for tests: moto's S3 behind its threaded HTTP server, one bucket per test.

Web and worker processes reach it over HTTP like any object storage (ARTIFACT_STORAGE_URL=s3://...),
with credentials from the standard AWS_* variables.
"""

import logging
import uuid
from dataclasses import dataclass

import boto3

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "switchyard-test",
    "AWS_SECRET_ACCESS_KEY": "switchyard-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_client(endpoint: str, credentials: dict[str, str]):
    """A boto3 S3 client for `endpoint`, with the AWS_* key pair and region in `credentials`."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=credentials["AWS_DEFAULT_REGION"],
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )


@dataclass
class S3Bucket:
    endpoint: str
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}?endpoint_url={self.endpoint}&region_name=us-east-1"

    @property
    def storage(self) -> dict:
        """The STORAGES["default"] entry for this bucket (what the settings make of `url`)."""
        from apps.core.storage_url import storage_config

        return storage_config(self.url)

    def client(self):
        return s3_client(self.endpoint, CREDENTIALS)

    def names(self, under: str = "") -> list[str]:
        """Every object's name relative to the prefix (what the storage calls it), sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        names = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/{under}"):
            names += [entry["Key"].removeprefix(f"{self.prefix}/") for entry in page.get("Contents", ())]
        return sorted(names)


def start_server():
    from moto.server import ThreadedMotoServer

    # One log line per request would bury the tests' own output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def new_bucket(endpoint: str) -> S3Bucket:
    bucket = S3Bucket(endpoint=endpoint, bucket=f"switchyard-{uuid.uuid4().hex[:12]}", prefix="media")
    bucket.client().create_bucket(Bucket=bucket.bucket)
    return bucket

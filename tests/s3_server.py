"""moto's S3 server on 127.0.0.1 for tests and benchmarks (plain Python, no pytest): the remote run channel."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Self

from loopback import LoopbackServer, free_port


class MotoS3(LoopbackServer):
    """moto's S3 on 127.0.0.1 (threaded server in this process) with ``bucket`` created; dummy credentials."""

    ACCESS_KEY = "channel-test-key"
    SECRET_KEY = "channel-test-secret"  # moto accepts any key: nothing real
    REGION = "us-east-1"

    def __init__(self, bucket: str = "dlh-channel") -> None:
        self.bucket = bucket
        self.port = 0
        self._server: Any = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            from moto.server import ThreadedMotoServer  # noqa: F401
        except ImportError as err:
            return False, f"moto[server] is not importable ({err}); the dev extra has it"
        return True, "moto server importable"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.REGION,
            aws_access_key_id=self.ACCESS_KEY, aws_secret_access_key=self.SECRET_KEY,
        )  # fmt: skip

    def connection(self) -> str:
        """An ``AIRFLOW_CONN_*`` value (JSON) for the amazon provider's aws connection to this server."""
        return json.dumps(
            {"conn_type": "aws", "login": self.ACCESS_KEY, "password": self.SECRET_KEY,
             "extra": {"endpoint_url": self.endpoint_url, "region_name": self.REGION}}
        )  # fmt: skip

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix.lstrip('/')}"

    def list_objects(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under ``prefix``."""
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(str(item["Key"]) for item in page.get("Contents", []))
        return sorted(keys)

    def get_object(self, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
            self._server = None

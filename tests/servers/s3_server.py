"""The tests' S3-compatible server: moto's S3 REST API (SigV4, conditional writes,
multipart) on 127.0.0.1, on a port the OS picks.

Started by the Rust test harness (tests/all/harness.rs, `S3Server`) with the moto venv
that `scripts/setup.sh --test` installs. What it adds to a bare `moto_server`:

- Authentication is on from the first request (INITIAL_NO_AUTH_ACTION_COUNT=0), so a wrong
  secret is refused with SignatureDoesNotMatch as AWS and MinIO would. Two IAM users are
  created in-process before serving: `writer` (s3:* on everything) and `reader` (get and
  list only, what a pull-request job gets); their keys are printed.
- Requests are handled one at a time (a lock around the app). Moto checks If-Match /
  If-None-Match and then writes without a lock, so two threads could both pass the check;
  AWS S3 and MinIO make the conditional write atomic. Serialising requests gives moto the
  same guarantee; the connections themselves are still served by threads.
- The bucket(s) named on the command line exist from the start.

Prints one JSON line on stdout when it accepts connections:
  {"port": N, "writer": {"id": ..., "secret": ...}, "reader": {...}}
and serves until killed.
"""

import argparse
import json
import os
import sys
import threading

os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")

from moto.core.models import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.iam.models import iam_backends  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

READ_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadObject"],
            "Resource": "*",
        }
    ],
}
ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


def user(iam, name, policy):
    iam.create_user("us-east-1", name)
    iam.put_user_policy(name, "policy", json.dumps(policy))
    key = iam.create_access_key(name)
    return {"id": key.access_key_id, "secret": key.secret_access_key}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bucket", action="append", default=[])
    args = parser.parse_args()

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    creds = {"writer": user(iam, "writer", ALL), "reader": user(iam, "reader", READ_ONLY)}
    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for b in args.bucket:
        s3.create_bucket(b, "us-east-1")

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    server = make_server(
        "127.0.0.1", 0, serialised, threaded=True, request_handler=MotoRequestHandler
    )
    print(json.dumps({"port": server.port, **creds}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

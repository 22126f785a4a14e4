"""The object store's credentials from a Prefect Secret block, for machines that keep them there.

s3fs reads credentials from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and
AWS_ENDPOINT_URL for an S3-compatible endpoint), an AWS profile or an instance role; that stays the
first choice, and this only fills the environment of the flow run's process where it has no key
and the config names a block (`store_credentials_block`). Processes started after it, Dask's local
workers and the training worker, inherit it. The values go nowhere else: not into the store's URI,
the manifests, the result-storage block or any message.
"""

from __future__ import annotations

import os

from prefect.blocks.system import Secret

FIELDS = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
          "aws_session_token": "AWS_SESSION_TOKEN", "endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_DEFAULT_REGION"}


class StoreCredentialsError(RuntimeError):
    """The configured credentials block cannot be used; says which block and why, never a value."""


def load_store_credentials(block: str | None) -> list[str]:
    """Set the AWS variables from Secret block `block` unless the environment has a key already;
    the names of the variables it set."""
    if not block or os.environ.get("AWS_ACCESS_KEY_ID"):
        return []
    try:
        value = Secret.load(block).get()
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise StoreCredentialsError(f"Prefect Secret block {block!r} (store_credentials_block) could not be "
                                    f"loaded: {exc}") from None
    if not isinstance(value, dict) or not value.get("aws_access_key_id") or not value.get("aws_secret_access_key"):
        raise StoreCredentialsError(f"Prefect Secret block {block!r} (store_credentials_block) must hold a JSON "
                                    "object with aws_access_key_id and aws_secret_access_key (and optionally "
                                    f"{', '.join(k for k in FIELDS if k not in ('aws_access_key_id', 'aws_secret_access_key'))})")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise StoreCredentialsError(f"Prefect Secret block {block!r} (store_credentials_block): unknown keys "
                                    f"{', '.join(unknown)}; known: {', '.join(FIELDS)}")
    set_now = [FIELDS[k] for k, v in value.items() if v and not os.environ.get(FIELDS[k])]
    for key, variable in FIELDS.items():
        if value.get(key) and variable in set_now:
            os.environ[variable] = str(value[key])
    return set_now

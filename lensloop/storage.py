"""S3-compatible object storage for media, exports and model files (docs/operations.md, "Object storage").

With ``LENSLOOP_STORAGE=s3`` the bucket is where these live; the data directory is a cache of it on each
machine, so a web server and workers on other machines share images, exports and checkpoints:

- **media**: an image stored by an import is uploaded to ``media/<sha-path>`` as it is stored (by the
  import's checking processes, which run without Django settings: they get an `S3Config`); a machine that
  lacks an image fetches it into its media folder on first use (`annotation.images.media_path`);
- **exports**: a download is written to ``exports/…`` and answered with a redirect to a presigned URL, so
  large exports never pass through the web tier again;
- **model files**: a version's checkpoint folder is uploaded under its path relative to the data directory
  when the step that made it succeeds (`publish_folder`), and fetched back where a later step needs it and
  does not have it (`local_folder`).

The default, ``LENSLOOP_STORAGE=local``, is the data directory alone and none of this runs. Credentials
come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role).
Every failure is a `StorageError` that names the bucket and what to do.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lensloop.errors import ServiceError


class StorageError(ServiceError):
    status = 503
    code = "storage_unavailable"


@dataclass(frozen=True)
class S3Config:
    bucket: str
    endpoint_url: str = ""
    prefix: str = ""
    region: str = ""

    def key(self, name: str) -> str:
        return f"{self.prefix.strip('/')}/{name}" if self.prefix.strip("/") else name


def config() -> S3Config | None:
    """The object store of this installation (Django settings), None with local storage."""
    from django.conf import settings

    if settings.LENSLOOP_STORAGE != "s3":
        return None
    return S3Config(settings.LENSLOOP_S3_BUCKET, settings.LENSLOOP_S3_ENDPOINT_URL, settings.LENSLOOP_S3_PREFIX,
                    settings.LENSLOOP_S3_REGION)


@functools.lru_cache(maxsize=8)
def _client(endpoint_url: str, region: str, pid: int):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10,
                                      read_timeout=60))


def client(cfg: S3Config):
    """A boto3 client for `cfg` (one per process: clients are not shared across fork)."""
    return _client(cfg.endpoint_url, cfg.region, os.getpid())


def _explain(cfg: S3Config, action: str, exc: Exception) -> StorageError:
    """A StorageError that says which bucket, what failed and what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = f"S3 bucket {cfg.bucket!r}" + (f" at {cfg.endpoint_url}" if cfg.endpoint_url else "")
    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, ClientError) and isinstance(cause, ClientError):
        exc = cause  # boto3's transfer errors (S3UploadFailedError) wrap the service's answer
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket" or (code == "404" and action == "checking the bucket"):
            return StorageError(f"{where} does not exist ({action}): create it, or set LENSLOOP_S3_BUCKET to one "
                                "that does")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return StorageError(f"{where} denies access ({action}: {code}): check the credentials "
                                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's policy")
        return StorageError(f"{where}: {action} failed: {code} {exc}")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{where}: no credentials ({action}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"{where} cannot be reached ({action}): {exc}; check LENSLOOP_S3_ENDPOINT_URL")
    return StorageError(f"{where}: {action} failed: {type(exc).__name__}: {exc}")


def _call(cfg: S3Config, action: str, fn, *args, **kwargs):
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        raise _explain(cfg, action, exc) from None


def check(cfg: S3Config | None = None) -> None:
    """That the bucket exists and takes a write, before an import or a round relies on it."""
    cfg = cfg or config()
    if cfg is None:
        return
    c = client(cfg)
    _call(cfg, "checking the bucket", c.head_bucket, Bucket=cfg.bucket)
    _call(cfg, "writing to the bucket", c.put_object, Bucket=cfg.bucket, Key=cfg.key(".lensloop-check"), Body=b"ok")


def upload_file(cfg: S3Config, path: Path | str, name: str) -> None:
    _call(cfg, f"uploading {name}", client(cfg).upload_file, str(path), cfg.bucket, cfg.key(name))


def download_file(cfg: S3Config, name: str, path: Path | str) -> bool:
    """Fetch object `name` to `path` atomically; False when the bucket has no such object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    os.close(fd)
    try:
        fetched = _unless_missing(cfg, f"downloading {name}",
                                  lambda: client(cfg).download_file(cfg.bucket, cfg.key(name), tmp) or True)
        if fetched is None:
            return False
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_range(cfg: S3Config, name: str, offset: int, length: int) -> bytes | None:
    """``length`` bytes of object ``name`` from ``offset`` (a ranged GET: a packed image out of its pack);
    None when the bucket has no such object."""
    return _unless_missing(cfg, f"reading {name}", lambda: client(cfg).get_object(
        Bucket=cfg.bucket, Key=cfg.key(name), Range=f"bytes={offset}-{offset + length - 1}")["Body"].read())


def _unless_missing(cfg: S3Config, action: str, fetch):
    """``fetch()``, or None when the bucket has no such object; any other failure explained (``_explain``)."""
    from botocore.exceptions import ClientError

    try:
        return fetch()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
            return None
        raise _explain(cfg, action, exc) from None
    except Exception as exc:
        raise _explain(cfg, action, exc) from None


def presigned_url(cfg: S3Config, name: str, *, filename: str = "", expires: int = 3600) -> str:
    params = {"Bucket": cfg.bucket, "Key": cfg.key(name)}
    if filename:
        params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
    return _call(cfg, f"signing {name}", client(cfg).generate_presigned_url, "get_object", Params=params,
                 ExpiresIn=expires)


# ---- media ---------------------------------------------------------------------------------------------


def media_key(relpath: str) -> str:
    return f"media/{relpath}"


# ---- model files ---------------------------------------------------------------------------------------


def _data_relative(folder: Path) -> str | None:
    from django.conf import settings

    try:
        return folder.resolve().relative_to(Path(settings.DATA_DIR).resolve()).as_posix()
    except ValueError:
        return None  # a model folder outside the data directory (a user's own base model): not ours to copy


def publish_folder(folder: Path | str) -> None:
    """Upload every file of a model folder under the data directory to the bucket (same relative path)."""
    cfg = config()
    folder = Path(folder)
    rel = _data_relative(folder) if cfg else None
    if cfg is None or rel is None:
        return
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        upload_file(cfg, path, f"{rel}/{path.relative_to(folder).as_posix()}")
    # The marker goes last: a folder is complete in the bucket once it is there.
    _call(cfg, f"uploading {rel}", client(cfg).put_object, Bucket=cfg.bucket, Key=cfg.key(f"{rel}/.complete"),
          Body=b"")


def local_folder(path: str) -> str:
    """A model folder as a local path: `path` itself when it is here (or storage is local), else fetched from
    the bucket into place (atomically: a temporary folder, renamed). StorageError when the bucket lacks it."""
    cfg = config()
    folder = Path(path) if path else None
    if cfg is None or folder is None or folder.exists():
        return path
    rel = _data_relative(folder)
    if rel is None:
        return path
    c = client(cfg)
    names = []
    paginator = c.get_paginator("list_objects_v2")
    for page in _call(cfg, f"listing {rel}", lambda: list(paginator.paginate(Bucket=cfg.bucket,
                                                                              Prefix=cfg.key(rel) + "/"))):
        names += [o["Key"][len(cfg.key(rel)) + 1:] for o in page.get("Contents", [])]
    if ".complete" not in names:
        raise StorageError(f"model folder {rel} is neither on this machine nor complete in S3 bucket {cfg.bucket!r}: "
                           "was it written by a step that failed, or with local storage?")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-incoming-"))
    try:
        for name in names:
            if name != ".complete":
                download_file(cfg, f"{rel}/{name}", tmp / name)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path

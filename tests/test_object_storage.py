"""S3-compatible object storage (lensloop/storage.py) against a real S3-compatible server the tests start: moto
in server mode, in a process of its own. An import uploads its images (from the import's checking processes
too) and a machine without them serves them from the bucket; an export download is a redirect to a presigned
URL the client downloads from the bucket; a round's checkpoint folder is uploaded and read back where it is
missing; a bucket that does not exist, or a server that denies the credentials, fails the import with a message
naming the bucket, and nothing is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import urllib.request
import zipfile
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from annotation.models import Image, Prompt
from annotation.services import import_checks
from annotation.services.imports import import_bundle
from lensloop import storage
from rlhf.models import ModelVersion
from rlhf.services import LoopError, activate_version
from tests import factories as f
from tests.s3 import keys

pytestmark = pytest.mark.django_db


def bundle(tmp_path, n: int = 3) -> Path:
    (tmp_path / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        (tmp_path / "images" / f"{i}.png").write_bytes(f.png_bytes((10 * i, 100, 200)))
        rows.append({"image": f"images/{i}.png", "prompt": "Describe the image.", "candidates": ["a", "b"]})
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


@pytest.mark.parametrize("inline", [True, False], ids=["in-process", "checking-processes"])
def test_an_import_stores_its_images_in_the_bucket_and_another_machine_serves_them(s3, settings, tmp_path,
                                                                                 monkeypatch, inline):
    if not inline:
        monkeypatch.setattr(import_checks, "INLINE_IMAGES", 1)  # the rest go to spawned checking processes
    alice = f.user("alice")
    proj = f.project("shapes", k=2, admins=[alice])
    report = import_bundle(project=proj, path=bundle(tmp_path / "src", n=4))
    assert report.ok and report.rows_imported == 4
    images = list(Image.objects.all())
    assert keys(s3, "media/") == sorted(s3.key(storage.media_key(i.file)) for i in images)
    # Another machine (or this one after its cache was cleared) has no media folder: the bucket serves.
    shutil.rmtree(settings.MEDIA_ROOT)
    api = APIClient()
    api.force_authenticate(alice)
    response = api.get(f"/api/projects/shapes/images/{images[0].pk}/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (Path(settings.MEDIA_ROOT) / images[0].file).read_bytes()


def test_an_export_download_comes_from_the_bucket(s3, tmp_path):
    alice = f.user("alice")
    proj = f.project("shapes", k=2, admins=[alice])
    import_bundle(project=proj, path=bundle(tmp_path / "src"))
    api = APIClient()
    api.force_authenticate(alice)
    response = api.get("/api/projects/shapes/export/", {"format": "rankings"})
    assert response.status_code == 302 and response["Location"].startswith(s3.endpoint_url)
    assert response["X-Lensloop-Quality"] in ("fresh", "stale", "missing")
    [key] = keys(s3, "exports/shapes/")
    assert key.endswith("-shapes-rankings.zip")
    with urllib.request.urlopen(response["Location"], timeout=30) as download:  # the presigned URL, no credentials
        assert 'filename="shapes-rankings.zip"' in download.headers["Content-Disposition"]
        archive = zipfile.ZipFile(io.BytesIO(download.read()))
    assert "README.md" in archive.namelist()


def test_a_rounds_checkpoint_is_uploaded_and_read_back_where_it_is_missing(s3, settings):
    proj = f.project("shapes")
    checkpoint = Path(settings.DATA_DIR) / "runs" / "round-7" / "3-ppo" / "checkpoint"
    (checkpoint / "sub").mkdir(parents=True)
    files = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": bytes(range(256)) * 64,
             "sub/value_head.safetensors": b"\x00\x01"}
    for name, data in files.items():
        (checkpoint / name).write_bytes(data)
    storage.publish_folder(checkpoint)  # what rlhf.steps does when the step that wrote it succeeds
    assert keys(s3, "runs/round-7/3-ppo/checkpoint/")[-1].endswith("checkpoint/sub/value_head.safetensors")
    version = ModelVersion.objects.create(project=proj, kind="policy", label="policy-v1", base_model="demo",
                                          path=str(checkpoint))
    shutil.rmtree(Path(settings.DATA_DIR) / "runs")  # a worker on another machine
    assert storage.local_folder(version.path) == version.path
    assert {p.relative_to(checkpoint).as_posix(): p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()} == files
    # Activating a version whose files this machine lacks fetches them too.
    shutil.rmtree(checkpoint)
    activate_version(version)
    assert (checkpoint / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"]
    # A folder the bucket does not hold whole (no marker: its upload never finished) is an error, not a guess.
    missing = ModelVersion.objects.create(project=proj, kind="policy", label="policy-v2", base_model="demo",
                                          path=str(Path(settings.DATA_DIR) / "runs" / "round-8" / "checkpoint"))
    with pytest.raises(LoopError, match=r"policy-v2 cannot be made active: its files are gone .* nor complete in "
                                         r"S3 bucket"):
        activate_version(missing)


def test_a_bucket_that_does_not_exist_fails_the_import_naming_it(s3, settings, tmp_path):
    settings.LENSLOOP_S3_BUCKET = "lensloop-no-such-bucket"
    proj = f.project("shapes", k=2)
    with pytest.raises(storage.StorageError, match=r"S3 bucket 'lensloop-no-such-bucket' at http://127\.0\.0\.1:[0-9]+ "
                                                   r"does not exist"):
        import_bundle(project=proj, path=bundle(tmp_path / "src"))
    assert not Prompt.objects.exists() and not Image.objects.exists()


def test_a_server_that_denies_the_credentials_fails_the_import_naming_the_fix(s3, settings, denying_server, tmp_path):
    settings.LENSLOOP_S3_ENDPOINT_URL = denying_server
    alice = f.user("alice")
    proj = f.project("shapes", k=2, admins=[alice])
    with pytest.raises(storage.StorageError, match=r"denies access .* check the credentials"):
        import_bundle(project=proj, path=bundle(tmp_path / "src"))
    assert not Prompt.objects.exists() and not Image.objects.exists()
    # Through the API: the error's message, with the storage status.
    api = APIClient()
    api.force_authenticate(alice)
    response = api.get("/api/projects/shapes/export/", {"format": "rankings"})
    assert response.status_code == 503 and "denies access" in response.json()["detail"]


def test_packed_images_of_an_installation_moved_to_object_storage_are_read_from_the_bucket(s3, settings, tmp_path):
    """Images imported with local storage are packed; after the media folder is copied to the bucket (as
    docs/operations.md says) a machine without it serves each image by a ranged read of its pack."""
    from annotation.images import media_path, pack_name

    alice = f.user("alice")
    proj = f.project("shapes", k=2, admins=[alice])
    settings.LENSLOOP_STORAGE = "local"
    import_bundle(project=proj, path=bundle(tmp_path / "src", n=3))
    images = list(Image.objects.all())
    by_sha = {hashlib.sha256(p.read_bytes()).hexdigest(): p.read_bytes() for p in (tmp_path / "src" / "images").iterdir()}
    sent = {image.pk: by_sha[image.sha256] for image in images}
    assert all(pack_name(image.file) for image in images) and len(sent) == 3
    settings.LENSLOOP_STORAGE = "s3"
    for pack in (Path(settings.MEDIA_ROOT) / "packs").iterdir():  # aws s3 sync var/data/media …/media
        storage.upload_file(s3, pack, storage.media_key(f"packs/{pack.name}"))
    shutil.rmtree(settings.MEDIA_ROOT)
    api = APIClient()
    api.force_authenticate(alice)
    for image in images:
        response = api.get(f"/api/projects/shapes/images/{image.pk}/")
        assert response.status_code == 200 and b"".join(response.streaming_content) == sent[image.pk]
    assert not (Path(settings.MEDIA_ROOT) / "packs").exists()  # the image's bytes only, not the pack
    assert media_path(images[0].file).read_bytes() == sent[images[0].pk]  # a file, where a path is needed
    missing = images[1].file.replace(pack_name(images[1].file), "gone.pack")
    with pytest.raises(FileNotFoundError, match=r"gone\.pack .* missing here and in the bucket"):
        media_path(missing)

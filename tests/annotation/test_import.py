"""Import: folders and zips, JSONL and CSV manifests, every bad-input case, both modes."""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, transaction
from PIL import Image as PILImage

from annotation.exceptions import ImportRejected
from annotation.models import Candidate, Image, Prompt, RankingTask
from annotation.services.imports import import_bundle
from tests import factories as f

pytestmark = pytest.mark.django_db


def _folder(tmp_path, rows, images=None, manifest="manifest.jsonl"):
    (tmp_path / "images").mkdir(exist_ok=True)
    for name, data in (images or {"images/red.png": f.png_bytes((255, 0, 0))}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if manifest.endswith(".jsonl"):
        text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    else:
        text = rows
    (tmp_path / manifest).write_text(text)
    return tmp_path


def _zip(tmp_path, members: dict[str, bytes | str], name="bundle.zip"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def _row(**kw):
    base = {"image": "images/red.png", "prompt": "Describe the image."}
    base.update(kw)
    return base


def test_it_imports_rows_with_candidates_as_open_tasks(tmp_path):
    proj = f.project(k=2, overlap=2)
    src = _folder(
        tmp_path,
        [
            _row(candidates=["a red square", "a blue circle"], reference=["a red square"], id="r1", priority=3),
            _row(prompt="What colour is it?", ground_truth={"color": "red"}, split="eval"),
        ],
    )
    report = import_bundle(project=proj, path=src)
    assert report.ok and report.rows_imported == 2 and report.tasks == 1
    task = RankingTask.objects.get(project=proj)
    assert task.required_annotations == 2 and task.priority == 3 and task.state == "open"
    assert list(Candidate.objects.filter(pk__in=task.candidate_ids).values_list("text", flat=True)) == [
        "a red square",
        "a blue circle",
    ]
    assert Prompt.objects.get(external_id="r1").reference == ["a red square"]
    assert Prompt.objects.get(split="eval").ground_truth == {"color": "red"}


def test_a_row_with_a_gold_ordering_becomes_a_gold_task_of_its_candidates(tmp_path):
    proj = f.project(k=3)
    src = _folder(tmp_path, [
        _row(candidates=["one", "two", "three"], gold_ordering=[[2], [0, 1]]),
        _row(prompt="Another.", candidates=["x", "y", "z"]),
        _row(prompt="CSV-style.", candidates=["p", "q", "r"], gold_ordering="[[1], [2], [0]]"),
    ])
    assert import_bundle(project=proj, path=src).tasks == 3
    tasks = list(RankingTask.objects.filter(project=proj).order_by("id"))
    text = dict(Candidate.objects.values_list("id", "text"))
    assert [t.state for t in tasks] == ["gold", "open", "gold"]
    assert [[text[c] for c in g] for g in tasks[0].gold_ordering] == [["three"], ["one", "two"]]
    assert tasks[1].gold_ordering is None
    assert [[text[c] for c in g] for g in tasks[2].gold_ordering] == [["q"], ["r"], ["p"]]


def test_text_with_tabs_newlines_backslashes_and_unicode_survives_the_import(tmp_path):
    """PostgreSQL imports write COPY's text format by hand; every character class it escapes comes back."""
    proj = f.project(k=2)
    awkward = ["a\tred\\square\nsecond line\r", "ein blauer Kreis – 円 \\N"]
    src = _folder(
        tmp_path,
        [_row(prompt="Tab\there, back\\slash", candidates=awkward, reference=["x\ty"], id="id\t1",
              ground_truth={"note": "a\\b\nc"})],
    )
    assert import_bundle(project=proj, path=src).ok
    prompt = Prompt.objects.get(project=proj)
    assert (prompt.text, prompt.reference, prompt.external_id) == ("Tab\there, back\\slash", ["x\ty"], "id\t1")
    assert prompt.ground_truth == {"note": "a\\b\nc"}
    task = RankingTask.objects.get(project=proj)
    assert [Candidate.objects.get(pk=pk).text for pk in task.candidate_ids] == [awkward[0].strip(), awkward[1]]


def test_duplicate_images_are_stored_once(tmp_path):
    proj = f.project(k=2)
    same = f.png_bytes((1, 2, 3))
    src = _folder(tmp_path, [_row(image="images/a.png"), _row(image="images/b.png")], {"images/a.png": same, "images/b.png": same})
    report = import_bundle(project=proj, path=src)
    assert Image.objects.count() == 1 and report.images_new == 1
    again = import_bundle(project=proj, path=src)
    assert Image.objects.count() == 1 and again.images_reused == 1 and Prompt.objects.count() == 4


def test_a_zip_with_a_csv_manifest_inside_a_top_folder_imports(tmp_path):
    proj = f.project(k=2)
    csv_text = 'image,prompt,candidates,ground_truth\nimages/red.png,Describe it.,"[""one"", ""two""]","{""count"": 1}"\n'
    bundle = _zip(tmp_path, {"batch/manifest.csv": csv_text, "batch/images/red.png": f.png_bytes()})
    report = import_bundle(project=proj, path=bundle)
    assert report.ok and report.tasks == 1
    assert Prompt.objects.get().ground_truth == {"count": 1}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"image": "images/red.png", "prompt": ', "manifest.jsonl:2: not valid JSON"),
        ('["not", "an", "object"]', "manifest.jsonl:2: each line must be a JSON object"),
        ({"prompt": "no image"}, "manifest.jsonl:2: 'image' is missing"),
        (_row(prompt=""), "manifest.jsonl:2: 'prompt' is missing or empty"),
        (_row(candidates=["only one"]), "manifest.jsonl:2: row has 1 candidates; this project ranks K=2"),
        (_row(candidates=["same", "same"]), "manifest.jsonl:2: candidates repeat"),
        (_row(split="test"), "manifest.jsonl:2: 'split' must be one of"),
        (_row(ground_truth="[1, 2"), "manifest.jsonl:2: 'ground_truth' is not valid JSON"),
        (_row(colour="red"), "manifest.jsonl:2: unknown fields ['colour']"),
        (_row(priority="high"), "manifest.jsonl:2: 'priority' must be a number"),
        (_row(image="images/missing.png"), "manifest.jsonl:2: image 'images/missing.png': 'images/missing.png' is not in"),
        (_row(image="../../etc/passwd"), "manifest.jsonl:2: image '../../etc/passwd': '../../etc/passwd' points outside"),
        (_row(candidates=["a", "b"], gold_ordering=[[0], [2]]),
         "manifest.jsonl:2: 'gold_ordering' must place each candidate position 0 to 1 exactly once, not [0, 2]"),
        (_row(candidates=["a", "b"], gold_ordering=[[0, 1]]), "manifest.jsonl:2: 'gold_ordering' ties every candidate"),
        (_row(candidates=["a", "b"], gold_ordering=[["a"], ["b"]]), "manifest.jsonl:2: 'gold_ordering' holds ['a']"),
        (_row(gold_ordering=[[0], [1]]), "manifest.jsonl:2: 'gold_ordering' needs the row's 'candidates'"),
    ],
)
def test_each_bad_row_is_reported_with_file_and_line_and_nothing_is_imported(tmp_path, row, message):
    proj = f.project(k=2)
    src = _folder(tmp_path, [_row(), row])
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src)
    problems = [str(p) for p in err.value.details["report"].problems]
    assert any(p.startswith(message) for p in problems), problems
    assert Prompt.objects.count() == 0 and RankingTask.objects.count() == 0


def test_partial_mode_keeps_good_rows_and_reports_bad_ones(tmp_path):
    proj = f.project(k=2)
    src = _folder(tmp_path, [_row(), "{broken", _row(prompt="Second good row")], {"images/red.png": f.png_bytes()})
    report = import_bundle(project=proj, path=src, mode="partial")
    assert report.rows == 3 and report.rows_imported == 2 and report.rows_skipped == 1
    assert [str(p) for p in report.problems] == ["manifest.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)"]
    assert Prompt.objects.count() == 2


def test_a_broken_image_is_refused(tmp_path):
    proj = f.project(k=2)
    truncated = f.png_bytes(size=(64, 64))[:60]
    src = _folder(tmp_path, [_row(image="images/bad.png")], {"images/bad.png": truncated})
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src)
    (problem,) = err.value.details["report"].problems
    assert problem.line == 1 and "images/bad.png" in problem.message
    assert "image" in problem.message.lower()


def test_a_text_file_posing_as_an_image_is_refused(tmp_path):
    proj = f.project(k=2)
    src = _folder(tmp_path, [_row(image="images/x.png")], {"images/x.png": b"hello, not an image"})
    with pytest.raises(ImportRejected, match="1 problem"):
        import_bundle(project=proj, path=src)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, settings):
    settings.LENSLOOP_MAX_IMAGE_PIXELS = 10_000
    proj = f.project(k=2)
    src = _folder(tmp_path, [_row(image="images/big.png")], {"images/big.png": f.png_bytes(size=(200, 200))})
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src)
    assert "40,000 pixels, over the limit of 10,000" in str(err.value.details["report"].problems[0])


def test_an_image_over_the_byte_limit_is_refused(tmp_path, settings):
    settings.LENSLOOP_MAX_IMAGE_BYTES = 50
    proj = f.project(k=2)
    src = _folder(tmp_path, [_row()])
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src)
    assert "over the limit of 50" in str(err.value.details["report"].problems[0])


def test_exif_orientation_is_applied(tmp_path):
    proj = f.project(k=2)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = f.png_bytes(size=(40, 20), fmt="JPEG", exif=exif.tobytes())
    src = _folder(tmp_path, [_row(image="images/photo.jpg")], {"images/photo.jpg": data})
    import_bundle(project=proj, path=src)
    image = Image.objects.get()
    assert (image.width, image.height) == (20, 40)


def test_zip_entries_that_would_land_outside_the_folder_are_refused(tmp_path):
    proj = f.project(k=2)
    bundle = _zip(
        tmp_path,
        {
            "manifest.jsonl": json.dumps(_row()) + "\n",
            "images/red.png": f.png_bytes(),
            "../evil.png": f.png_bytes(),
            "/abs/evil.png": f.png_bytes(),
        },
    )
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=bundle)
    refused = {p.file for p in err.value.details["report"].problems}
    assert refused == {"../evil.png", "/abs/evil.png"}
    assert not (tmp_path.parent / "evil.png").exists()
    report = import_bundle(project=proj, path=bundle, mode="partial")
    assert report.rows_imported == 1 and len(report.problems) == 2


def test_a_file_that_is_not_a_zip_or_folder_is_refused(tmp_path):
    proj = f.project(k=2)
    path = tmp_path / "bundle.zip"
    path.write_bytes(b"PK not really")
    with pytest.raises(ImportRejected, match=r"give a folder or a \.zip"):
        import_bundle(project=proj, path=path)


def test_a_bundle_without_manifest_is_refused(tmp_path):
    proj = f.project(k=2)
    bundle = _zip(tmp_path, {"images/red.png": f.png_bytes()})
    with pytest.raises(ImportRejected, match=r"no manifest\.jsonl or manifest\.csv"):
        import_bundle(project=proj, path=bundle)


def test_a_csv_row_with_extra_cells_is_reported(tmp_path):
    proj = f.project(k=2)
    src = _folder(tmp_path, "image,prompt\nimages/red.png,Describe.,surplus\n", manifest="manifest.csv")
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src)
    assert str(err.value.details["report"].problems[0]) == "manifest.csv:2: row has more cells than the header"


def test_an_empty_manifest_is_refused(tmp_path):
    proj = f.project(k=2)
    src = _folder(tmp_path, [])
    with pytest.raises(ImportRejected, match="1 problem"):
        import_bundle(project=proj, path=src)


def test_a_zip_member_that_unpacks_larger_than_its_header_says_is_capped(tmp_path, settings):
    settings.LENSLOOP_MAX_IMAGE_BYTES = 1000
    proj = f.project(k=2)
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.jsonl", json.dumps(_row()) + "\n")
        zf.writestr("images/red.png", b"\0" * 100_000)
    path = tmp_path / "bomb.zip"
    path.write_bytes(big.getvalue())
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=path)
    assert "over the limit of 1,000" in str(err.value.details["report"].problems[0])


def test_deleting_a_project_or_a_prompt_removes_what_was_imported_into_it(tmp_path):
    """Django performs the cascade (the constraints are DEFERRABLE, without ON DELETE CASCADE); it must
    leave no orphans."""
    proj, other = f.project(k=2), f.project(k=2)
    for target, sub in ((proj, "a"), (other, "b")):
        (tmp_path / sub).mkdir()
        rows = [_row(prompt=f"Describe {i}.", candidates=[f"x{i}", f"y{i}"]) for i in range(3)]
        assert import_bundle(project=target, path=_folder(tmp_path / sub, rows)).ok
    victim = Prompt.objects.filter(project=other).first()
    victim.delete()
    assert not Candidate.objects.filter(prompt_id=victim.pk).exists()
    assert not RankingTask.objects.filter(prompt_id=victim.pk).exists()
    proj.delete()
    assert not Prompt.objects.filter(project_id=proj.pk).exists()
    assert not RankingTask.objects.filter(project_id=proj.pk).exists()
    assert Candidate.objects.filter(prompt__project=other).count() == 4
    assert Candidate.objects.count() == 4 and RankingTask.objects.count() == 2


def test_rows_without_a_split_are_held_out_by_hash_the_same_on_every_import(tmp_path):
    """About heldout_fraction of them, chosen by the row's id (else image and text), never by chance."""
    from annotation.splits import hashed_split, split_key

    rows = [_row(prompt=f"Question {i}?", id=f"q{i}") for i in range(200)]
    rows += [_row(prompt="Kept for training.", id="t", split="train"), _row(prompt="Held out.", id="e", split="eval")]
    src = _folder(tmp_path, rows)
    first, second = f.project(k=2), f.project(k=2)
    first.heldout_fraction = second.heldout_fraction = 0.25
    first.save()
    second.save()
    report = import_bundle(project=first, path=src)
    import_bundle(project=second, path=src)

    def held(proj):
        return set(Prompt.objects.filter(project=proj, split="eval").values_list("external_id", flat=True))

    assert held(first) == held(second), "the same data must hold out the same prompts"
    assert "e" in held(first) and "t" not in held(first), "a row that says its split keeps it"
    hashed = held(first) - {"e"}
    assert 25 <= len(hashed) <= 75, f"{len(hashed)} of 200 held out at fraction 0.25"
    assert hashed == {f"q{i}" for i in range(200) if hashed_split(split_key(external_id=f"q{i}", image_sha256="",
                                                                            text=""), 0.25) == "eval"}
    assert report.prompts_heldout == len(held(first))


def test_rows_without_an_id_are_split_by_image_and_text_and_a_zero_fraction_holds_none_out(tmp_path):
    rows = [_row(prompt=f"Question {i}?") for i in range(60)]
    src = _folder(tmp_path, rows)
    proj = f.project(k=2)
    proj.heldout_fraction = 0.5
    proj.save()
    import_bundle(project=proj, path=src)
    held = set(Prompt.objects.filter(project=proj, split="eval").values_list("text", flat=True))
    assert 10 <= len(held) <= 50
    again = f.project(k=2)
    again.heldout_fraction = 0.5
    again.save()
    import_bundle(project=again, path=src)
    assert set(Prompt.objects.filter(project=again, split="eval").values_list("text", flat=True)) == held
    none = f.project(k=2)
    none.heldout_fraction = 0.0
    none.save()
    import_bundle(project=none, path=src)
    assert not Prompt.objects.filter(project=none, split="eval").exists()


def test_an_import_satisfies_every_foreign_key_of_the_database(tmp_path):
    """On PostgreSQL the import writes through a staging table and sequences of its own; whatever it
    writes must pass the database's own constraint check (the FK checks run at the end of each batch)."""
    proj = f.project(k=2)
    rows = [_row(prompt=f"Describe {i}.", candidates=[f"x{i}", f"y{i}"], priority=i % 3) for i in range(5)]
    rows.append(_row(prompt="No candidates here."))
    report = import_bundle(project=proj, path=_folder(tmp_path, rows))
    assert (report.prompts, report.candidates, report.tasks) == (6, 10, 5)
    connection.check_constraints()
    tasks = list(RankingTask.objects.filter(project=proj).order_by("id"))
    assert [t.prompt.text for t in tasks] == [f"Describe {i}." for i in range(5)], "tasks keep the manifest's order"
    for t in tasks:
        texts = list(Candidate.objects.filter(pk__in=t.candidate_ids).values_list("prompt_id", "text"))
        assert sorted(texts) == [(t.prompt_id, t.prompt.text.replace("Describe ", "x").rstrip(".")),
                                 (t.prompt_id, t.prompt.text.replace("Describe ", "y").rstrip("."))]
        assert [Candidate.objects.get(pk=c).text[0] for c in t.candidate_ids] == ["x", "y"]


@pytest.mark.parametrize("orphan", ["prompt.project", "task.project", "candidate.prompt"])
def test_the_database_refuses_rows_whose_project_or_prompt_does_not_exist(orphan):
    """Prompt.project, RankingTask.project and Candidate.prompt have their foreign-key constraints."""
    proj = f.project(k=2)
    task = f.task(proj)
    missing = 10**9
    with pytest.raises(IntegrityError), transaction.atomic():
        if orphan == "prompt.project":
            Prompt.objects.create(project_id=missing, image=f.image(), text="orphan")
        elif orphan == "task.project":
            RankingTask.objects.create(project_id=missing, prompt=task.prompt, candidate_ids=task.candidate_ids)
        else:
            Candidate.objects.create(prompt_id=missing, text="orphan", source="import")
        connection.check_constraints()  # the constraints are deferred to the commit; check now


def _zip_with_lying_size(tmp_path, member: str, data: bytes, stated: int):
    """A zip whose directory says ``member`` is ``stated`` bytes long (it is ``len(data)``)."""
    path = _zip(tmp_path, {"manifest.jsonl": json.dumps(_row(image=member)) + "\n", member: data}, name="liar.zip")
    raw = bytearray(path.read_bytes())
    name = member.encode()
    for signature, size_at in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):  # central and local headers
        at = raw.find(signature + b"", 0)
        while at >= 0:
            name_at = at + (46 if signature == b"PK\x01\x02" else 30)
            if raw[name_at : name_at + len(name)] == name:
                raw[at + size_at : at + size_at + 4] = stated.to_bytes(4, "little")
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))
    return path


def test_a_zip_member_whose_header_lies_about_its_size_is_refused_not_read_past_it(tmp_path):
    proj = f.project(k=2)
    path = _zip_with_lying_size(tmp_path, "images/red.png", f.png_bytes(size=(64, 64)), stated=40)
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=path)
    (problem,) = err.value.details["report"].problems
    assert problem.line == 1 and "images/red.png" in problem.message and "damaged in the zip" in problem.message
    assert Prompt.objects.count() == 0


def test_a_zip_member_whose_bytes_do_not_match_its_checksum_is_refused(tmp_path):
    proj = f.project(k=2)
    png = f.png_bytes(size=(16, 16))
    path = _zip(tmp_path, {"manifest.jsonl": json.dumps(_row()) + "\n", "images/red.png": png})
    raw = bytearray(path.read_bytes())
    at = raw.find(png)
    raw[at + len(png) // 2] ^= 0xFF  # stored (not deflated): the flipped byte reaches the reader as is
    path.write_bytes(bytes(raw))
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=path)
    assert "Bad CRC-32" in str(err.value.details["report"].problems[0])


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compressed_zip_members_are_read_and_a_damaged_one_is_refused(tmp_path, method):
    proj = f.project(k=2)
    png = f.png_bytes(size=(24, 24))
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    for path in (good, bad):
        with zipfile.ZipFile(path, "w", compression=method) as zf:
            zf.writestr("manifest.jsonl", json.dumps(_row()) + "\n")
            zf.writestr("images/red.png", png)
    assert import_bundle(project=proj, path=good).rows_imported == 1
    raw = bytearray(bad.read_bytes())
    with zipfile.ZipFile(bad) as zf:
        info = zf.getinfo("images/red.png")
    data_at = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[data_at + info.compress_size // 2] ^= 0x55  # inside the compressed bytes
    bad.write_bytes(bytes(raw))
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=f.project(k=2), path=bad)
    (problem,) = err.value.details["report"].problems
    assert "images/red.png" in problem.message and "damaged in the zip" in problem.message


def test_a_png_whose_chunk_checksum_is_wrong_is_refused(tmp_path):
    proj = f.project(k=2)
    png = bytearray(f.png_bytes(size=(16, 16)))
    idat = png.find(b"IDAT")
    png[idat + 4] ^= 0x01  # the first byte of the compressed pixels: its chunk's CRC no longer matches
    src = _folder(tmp_path, [_row(image="images/bad.png")], {"images/bad.png": bytes(png)})
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src)
    assert "bad checksum in chunk b'IDAT'" in str(err.value.details["report"].problems[0])


def test_a_manifest_that_stops_being_utf8_reports_the_line_and_keeps_the_rows_before(tmp_path):
    proj = f.project(k=2)
    good = (json.dumps(_row(prompt="first")) + "\n" + json.dumps(_row(prompt="second")) + "\n").encode()
    src = _folder(tmp_path, [], manifest="manifest.jsonl")
    (src / "manifest.jsonl").write_bytes(good + b'{"image": "images/red.png", "prompt": "\xff\xfe"}\n')
    report = import_bundle(project=proj, path=src, mode="partial")
    assert report.rows_imported == 2 and [p.line for p in report.problems] == [3]
    assert "not UTF-8" in report.problems[0].message


def test_a_report_lists_the_first_thousand_problems_and_counts_them_all(tmp_path):
    proj = f.project(k=2)
    src = _folder(tmp_path, [_row()] + ["{broken"] * 1005)
    report = import_bundle(project=proj, path=src, mode="partial")
    assert report.rows_imported == 1 and report.rows_skipped == 1005
    assert report.problems_total == 1005 and len(report.problems) == 1000
    assert report.problems[-1].line == 1001


def test_images_checked_in_a_pool_of_processes_keep_rows_lines_and_order(tmp_path):
    """More images than the import checks by itself: the pool's answers come back to the right rows."""
    proj = f.project(k=2)
    n = 2600
    members = {f"images/{i}.png": f.png_bytes(color=(i % 256, i // 256, 9), size=(4, 4)) for i in range(n)}
    members["images/2400.png"] = b"not a png"
    rows = [json.dumps(_row(image=f"images/{i}.png", prompt=f"p{i}", candidates=[f"a{i}", f"b{i}"])) for i in range(n)]
    bundle = _zip(tmp_path, {"manifest.jsonl": "\n".join(rows) + "\n", **members})
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=bundle, processes=2)
    assert [p.line for p in err.value.details["report"].problems] == [2401]
    assert Prompt.objects.count() == 0
    report = import_bundle(project=proj, path=bundle, processes=2, mode="partial")
    assert report.rows_imported == n - 1 and report.images_new == n - 1
    task = RankingTask.objects.get(prompt__text="p2599")
    assert Prompt.objects.get(text="p2599").image.sha256 == __import__("hashlib").sha256(members["images/2599.png"]).hexdigest()
    assert [Candidate.objects.get(pk=i).text for i in task.candidate_ids] == ["a2599", "b2599"]
    assert list(RankingTask.objects.order_by("id").values_list("prompt__text", flat=True)[:3]) == ["p0", "p1", "p2"]


def test_an_images_ground_truth_comes_from_its_first_row_that_has_one(tmp_path):
    proj = f.project(k=2)
    rows = [_row(prompt="no truth")] + [_row(prompt=f"filler {i}", image="images/blue.png") for i in range(1500)]
    rows.append(_row(prompt="with truth", ground_truth={"count": 3}))
    rows.append(_row(prompt="later truth", ground_truth={"count": 4}))
    src = _folder(tmp_path, rows, {"images/red.png": f.png_bytes((255, 0, 0)), "images/blue.png": f.png_bytes((0, 0, 255))})
    import_bundle(project=proj, path=src)
    red = Prompt.objects.get(text="no truth").image
    assert red.ground_truth == {"count": 3}
    assert Prompt.objects.get(text="later truth").ground_truth == {"count": 4}


def test_a_problem_after_batches_were_written_rolls_them_back_and_the_report_counts_nothing(tmp_path, monkeypatch):
    """On PostgreSQL the first batches are written before the bad row is read; all or nothing still holds."""
    from annotation.services import import_writes

    monkeypatch.setattr(import_writes, "COPY_BATCH", 500)
    monkeypatch.setattr(import_writes, "BATCH", 500)
    proj = f.project(k=2)
    rows = [_row(prompt=f"good {i}", candidates=[f"a{i}", f"b{i}"]) for i in range(2500)]
    rows.append(_row(image="images/missing.png"))
    src = _folder(tmp_path, rows)
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src)
    report = err.value.details["report"]
    assert (report.rows, report.rows_imported, report.rows_skipped, report.problems_total) == (2501, 0, 2501, 1)
    assert report.prompts == report.candidates == report.tasks == report.rows_written == report.images_new == 0
    assert not Prompt.objects.filter(project=proj).exists() and not RankingTask.objects.filter(project=proj).exists()
    partial = import_bundle(project=proj, path=src, mode="partial")
    assert (partial.rows_imported, partial.prompts, partial.tasks) == (2500, 2500, 2500)


def test_a_late_ground_truth_reaches_an_image_written_in_an_earlier_batch_but_not_an_older_image(tmp_path, monkeypatch):
    """On PostgreSQL batches are written while later rows are checked: the image's first row (no truth) is
    written before the row that has its truth is read. An image stored by an earlier import keeps its own."""
    from annotation.services import import_writes

    monkeypatch.setattr(import_writes, "COPY_BATCH", 500)
    monkeypatch.setattr(import_writes, "BATCH", 500)
    older = f.project(k=2)
    (tmp_path / "older").mkdir()
    blue = f.png_bytes((0, 0, 255))
    import_bundle(project=older, path=_folder(tmp_path / "older", [_row(image="images/blue.png")],
                                              {"images/blue.png": blue}))
    proj = f.project(k=2)
    rows = [_row(prompt="no truth"), _row(prompt="blue", image="images/blue.png")]
    rows += [_row(prompt=f"filler {i}", image="images/green.png") for i in range(1500)]
    rows += [_row(prompt="with truth", ground_truth={"count": 3}),
             _row(prompt="blue truth", image="images/blue.png", ground_truth={"count": 9})]
    src = _folder(tmp_path, rows, {"images/red.png": f.png_bytes((255, 0, 0)), "images/blue.png": blue,
                                   "images/green.png": f.png_bytes((0, 255, 0))})
    assert import_bundle(project=proj, path=src).rows_imported == len(rows)
    assert Prompt.objects.get(text="no truth").image.ground_truth == {"count": 3}
    assert Prompt.objects.get(text="blue").image.ground_truth is None


def _packs(settings) -> list[str]:
    folder = Path(settings.MEDIA_ROOT) / "packs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _distinct_bundle(tmp_path, n: int, broken: int | None = None):
    members = {f"images/{i}.png": f.png_bytes(color=(i % 256, i // 256, 9), size=(4, 4)) for i in range(n)}
    if broken is not None:
        members[f"images/{broken}.png"] = b"not a png"
    rows = [json.dumps(_row(image=f"images/{i}.png", prompt=f"p{i}", candidates=[f"a{i}", f"b{i}"])) for i in range(n)]
    return _zip(tmp_path, {"manifest.jsonl": "\n".join(rows) + "\n", **members}), members


def test_an_imports_new_images_go_into_packs_and_are_served_and_exported_from_them(tmp_path, settings, monkeypatch):
    """The importing process checks the first images itself, then a pool of processes: each appends what it
    stores to a pack of its own, and no image gets a file of its own until something needs a path."""
    from rest_framework.test import APIClient

    from annotation.images import pack_name
    from annotation.services import import_checks, imports
    from annotation.services.exports import write_prompt_set

    monkeypatch.setattr(import_checks, "INLINE_IMAGES", 10)
    monkeypatch.setattr(imports, "CHUNK", 10)
    admin = f.user("ada")
    proj = f.project(k=2, admins=[admin])
    bundle, members = _distinct_bundle(tmp_path, 40)
    report = import_bundle(project=proj, path=bundle, processes=2)
    assert report.images_new == 40
    by_sha = {hashlib.sha256(data).hexdigest(): data for data in members.values()}
    images = list(Image.objects.all())
    packs = {pack_name(image.file) for image in images}
    assert None not in packs and len(packs) >= 2  # the importing process's and at least one checker's
    assert _packs(settings) == sorted(packs)
    assert not (Path(settings.MEDIA_ROOT) / "images").exists()
    client = APIClient()
    client.force_authenticate(admin)
    for image in images:
        response = client.get(f"/api/projects/{proj.slug}/images/{image.pk}/")
        assert response.status_code == 200 and response["Content-Length"] == str(image.size_bytes)
        assert b"".join(response.streaming_content) == by_sha[image.sha256]
    write_prompt_set(proj, tmp_path / "set")
    records = [json.loads(line) for line in (tmp_path / "set" / "prompts.jsonl").read_text().splitlines()]
    assert len(records) == 40
    for record in records:
        image = Prompt.objects.get(pk=record["prompt_id"]).image
        assert (tmp_path / "set" / record["images"][0]).read_bytes() == by_sha[image.sha256]


def test_a_rejected_import_and_an_import_of_images_already_there_leave_no_pack(tmp_path, settings, monkeypatch):
    from annotation.services import import_checks, imports

    monkeypatch.setattr(import_checks, "INLINE_IMAGES", 10)
    monkeypatch.setattr(imports, "CHUNK", 10)
    proj = f.project(k=2)
    (tmp_path / "bad").mkdir()
    bad, _ = _distinct_bundle(tmp_path / "bad", 30, broken=25)
    with pytest.raises(ImportRejected):
        import_bundle(project=proj, path=bad, processes=2)
    assert _packs(settings) == [] and not Image.objects.exists()  # the good images' packs went with the rows
    bundle, _ = _distinct_bundle(tmp_path, 30)
    import_bundle(project=proj, path=bundle, processes=2)
    kept, files = _packs(settings), dict(Image.objects.values_list("sha256", "file"))
    assert kept and all(file.startswith("packs/") for file in files.values())
    again = import_bundle(project=proj, path=bundle, processes=2)
    assert again.images_reused == 30 and Prompt.objects.count() == 60
    assert _packs(settings) == kept and dict(Image.objects.values_list("sha256", "file")) == files


def test_an_image_that_has_a_file_of_its_own_keeps_it(tmp_path, settings):
    proj = f.project(k=2)
    stored = f.image((1, 2, 3))  # stored as a file before packs (or copied out of one since)
    src = _folder(tmp_path, [_row(image="images/a.png")], {"images/a.png": f.png_bytes((1, 2, 3))})
    report = import_bundle(project=proj, path=src)
    assert report.images_reused == 1 and Prompt.objects.get().image == stored
    assert not stored.file.startswith("packs/") and _packs(settings) == []

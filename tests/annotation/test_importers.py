"""Standard dataset importers: tiny files in each dataset's real layout, imported through the real pipeline."""

import csv
import json
import zipfile

import pytest
from django.core.management import CommandError, call_command

from annotation.exceptions import ImportRejected
from annotation.importers import GROUNDING_PROMPT, lensloop_split
from annotation.models import Candidate, Image, Prompt, RankingTask
from annotation.services.imports import import_bundle
from tests import factories as f

pytestmark = pytest.mark.django_db

RED, GREEN, BLUE = (230, 20, 20), (20, 200, 40), (30, 40, 220)


def _jpeg(color, size=(40, 30)):
    return f.png_bytes(color, size=size, fmt="JPEG")


def _write(root, files: dict):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, (dict, list)):
            data = json.dumps(data)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


def _zip(tmp_path, root, name="upload.zip"):
    out = tmp_path / name
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root.parent).as_posix())  # inside one top folder
    return out


def _problems(err):
    return [str(p) for p in err.value.details["report"].problems]


def _prompts(proj):
    return list(Prompt.objects.filter(project=proj).order_by("id"))


# --- COCO Captions ----------------------------------------------------------------------------------

def _coco_captions(sub="val2017", images=((397133, RED), (37777, GREEN)), captions=None):
    imgs = [{"license": 4, "file_name": f"{i:012d}.jpg", "coco_url": f"http://images.cocodataset.org/{sub}/{i:012d}.jpg",
             "height": 30, "width": 40, "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": i}
            for i, _ in images]
    anns = captions if captions is not None else [
        {"image_id": 397133, "id": 370509, "caption": "A man is in a kitchen making pizzas."},
        {"image_id": 397133, "id": 370584, "caption": "Man in apron standing on front of oven with pans and bakeware"},
        {"image_id": 37777, "id": 3551, "caption": "The dining table near the kitchen has a bowl of fruit on it."},
    ]
    return {
        "info": {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2017},
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 4, "name": "Attribution"}],
        "images": imgs,
        "annotations": anns,
    }


def _coco_folder(root, sub="val2017", **kw):
    data = _coco_captions(sub, **kw)
    files = {f"annotations/captions_{sub}.json": data}
    for img, color in zip(data["images"], (RED, GREEN, BLUE), strict=False):
        files[f"{sub}/{img['file_name']}"] = _jpeg(color)
    return _write(root, files)


def test_coco_captions_import_one_prompt_per_image_with_its_captions_as_references(tmp_path):
    proj = f.project(k=2)
    report = import_bundle(project=proj, path=_coco_folder(tmp_path / "coco"), format="coco")
    assert report.ok and (report.rows, report.prompts, report.tasks, report.candidates) == (2, 2, 0, 0)
    assert report.manifest == "annotations/captions_val2017.json" and report.format == "coco"
    first, second = _prompts(proj)
    assert first.text == second.text == "Describe the image."
    assert first.reference == ["A man is in a kitchen making pizzas.",
                               "Man in apron standing on front of oven with pans and bakeware"]
    assert (first.external_id, first.split, second.split) == ("397133", "eval", "eval")  # val → held out
    assert Image.objects.count() == 2 and not Candidate.objects.exists() and not RankingTask.objects.exists()


def test_coco_split_limit_zip_and_the_hash_held_out_choice(tmp_path):
    root = tmp_path / "coco"
    _coco_folder(root, "val2017")
    _coco_folder(root, "train2017", images=((9, BLUE),), captions=[{"image_id": 9, "id": 1, "caption": "Blue."}])
    proj = f.project(k=2)
    report = import_bundle(project=proj, path=_zip(tmp_path, root), format="coco", split="train")
    assert report.rows == 1 and [(p.reference, p.split) for p in _prompts(proj)] == [(["Blue."], "train")]
    other = f.project(k=2)
    other.heldout_fraction = 0.0
    other.save()
    assert import_bundle(project=other, path=root, format="coco", limit=2, heldout="hash").prompts == 2
    assert {p.split for p in _prompts(other)} == {"train"}


def test_a_caption_of_a_missing_image_id_names_the_file_and_record_and_nothing_is_written(tmp_path):
    captions = [{"image_id": 397133, "id": 1, "caption": "Fine."}, {"image_id": 555, "id": 77, "caption": "Orphan."}]
    src = _coco_folder(tmp_path / "coco", captions=captions)
    proj = f.project(k=2)
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src, format="coco")
    assert _problems(err) == ["annotations/captions_val2017.json [annotations[1], id 77]: "
                              "image_id 555 is not among the file's images"]
    assert not Prompt.objects.exists() and not Image.objects.filter(prompts__isnull=False).exists()
    report = import_bundle(project=proj, path=src, format="coco", mode="partial")
    assert (report.rows, report.rows_imported, report.rows_skipped) == (3, 2, 1)


def test_malformed_json_and_a_missing_image_are_reported_by_file(tmp_path):
    src = _write(tmp_path / "coco", {"annotations/captions_val2017.json": '{"images": [', "val2017/x.jpg": _jpeg(RED)})
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=f.project(k=2), path=src, format="coco")
    assert _problems(err) == ["annotations/captions_val2017.json: not valid JSON: Expecting value (line 1, column 13)"]
    other = _coco_folder(tmp_path / "other")
    (other / "val2017" / "000000037777.jpg").unlink()
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=f.project(k=2), path=other, format="coco")
    (problem,) = _problems(err)
    assert problem.startswith("annotations/captions_val2017.json [images[1], id 37777]: image 'val2017/000000037777.jpg'")


# --- Karpathy ---------------------------------------------------------------------------------------

def _karpathy_flickr(root):
    def sentences(img, texts):
        return [{"tokens": t.lower().rstrip(".").split(), "raw": t, "imgid": img, "sentid": img * 5 + n}
                for n, t in enumerate(texts)]
    data = {"images": [
        {"sentids": [0, 1], "imgid": 0, "sentences": sentences(0, ["Two young guys look at their hands.",
                                                                   "Two men in green shirts."]),
         "split": "train", "filename": "1000092795.jpg"},
        {"sentids": [5], "imgid": 1, "sentences": sentences(1, ["A dog runs."]), "split": "val", "filename": "10002456.jpg"},
        {"sentids": [10], "imgid": 2, "sentences": sentences(2, ["A red ball."]), "split": "test", "filename": "1000268201.jpg"},
    ], "dataset": "flickr30k"}
    return _write(root, {"dataset_flickr30k.json": data, "flickr30k-images/1000092795.jpg": _jpeg(RED),
                         "flickr30k-images/10002456.jpg": _jpeg(GREEN), "flickr30k-images/1000268201.jpg": _jpeg(BLUE)})


def test_karpathy_flickr30k_maps_val_and_test_to_eval_and_picks_splits(tmp_path):
    src = _karpathy_flickr(tmp_path / "flickr")
    proj = f.project(k=2)
    assert import_bundle(project=proj, path=src, format="karpathy").prompts == 3
    assert [(p.external_id, p.split, p.reference) for p in _prompts(proj)] == [
        ("1000092795.jpg", "train", ["Two young guys look at their hands.", "Two men in green shirts."]),
        ("10002456.jpg", "eval", ["A dog runs."]),
        ("1000268201.jpg", "eval", ["A red ball."]),
    ]
    only = f.project(k=2)
    assert import_bundle(project=only, path=src, format="karpathy", split="val,test").prompts == 2


def test_karpathy_coco_reads_filepath_and_cocoid(tmp_path):
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "sentids": [770337], "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
         "split": "restval", "sentences": [{"tokens": ["a", "man"], "raw": "A man with a red helmet.", "imgid": 0,
                                            "sentid": 770337}], "cocoid": 391895}]}
    src = _write(tmp_path / "k", {"dataset_coco.json": data, "val2014/COCO_val2014_000000391895.jpg": _jpeg(RED)})
    proj = f.project(k=2)
    import_bundle(project=proj, path=src, format="karpathy")
    (prompt,) = _prompts(proj)
    assert (prompt.external_id, prompt.split, prompt.reference) == ("391895", "train", ["A man with a red helmet."])


# --- VQA v2 -----------------------------------------------------------------------------------------

def _vqa_folder(root, extra_annotation=None, drop_question=False):
    questions = [{"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
                 {"image_id": 262148, "question": "What are the people in the background doing?", "question_id": 262148001},
                 {"image_id": 393225, "question": "Is the bowl full?", "question_id": 393225000}]
    if drop_question:
        questions = questions[:2]

    def answers(*words):
        return [{"answer": w, "answer_confidence": "yes", "answer_id": n + 1} for n, w in enumerate(words)]

    anns = [
        {"question_type": "none of the above", "multiple_choice_answer": "down", "answers": answers(
            "down", "down", "at table", "skateboard", "down", "table", "down", "down", "down", "down"),
         "image_id": 262148, "answer_type": "other", "question_id": 262148000},
        {"question_type": "what are the", "multiple_choice_answer": "watching", "answers": answers(
            "spectating", "watching", "watching", "watching", "watching", "watching", "standing", "watching",
            "watching", "watching"), "image_id": 262148, "answer_type": "other", "question_id": 262148001},
        {"question_type": "is the", "multiple_choice_answer": "no", "answers": answers(*["no"] * 9, "yes"),
         "image_id": 393225, "answer_type": "yes/no", "question_id": 393225000},
    ]
    if extra_annotation:
        anns.append(extra_annotation)
    head = {"info": {"description": "This is v2.0 of the VQA dataset.", "version": "2.0", "year": 2017},
            "license": {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"},
            "data_subtype": "val2014", "data_type": "mscoco"}
    return _write(root, {
        "v2_OpenEnded_mscoco_val2014_questions.json": {**head, "task_type": "Open-Ended", "questions": questions},
        "v2_mscoco_val2014_annotations.json": {**head, "annotations": anns},
        "val2014/COCO_val2014_000000262148.jpg": _jpeg(RED),
        "val2014/COCO_val2014_000000393225.jpg": _jpeg(GREEN),
    })


def test_vqa_v2_questions_become_prompts_with_the_most_common_answer_and_all_answers_kept(tmp_path):
    proj = f.project(k=2)
    report = import_bundle(project=proj, path=_vqa_folder(tmp_path / "vqa"), format="vqa", heldout="hash")
    assert report.ok and report.prompts == 3 and report.images_new == 2
    first = _prompts(proj)[0]
    assert (first.text, first.external_id, first.reference) == ("Where is he looking?", "262148000", ["down"])
    assert first.ground_truth["answers"].count("down") == 7 and len(first.ground_truth["answers"]) == 10
    assert first.ground_truth["answer_type"] == "other"


def test_a_vqa_annotation_without_a_question_is_refused_naming_both_files(tmp_path):
    src = _vqa_folder(tmp_path / "vqa", drop_question=True)
    proj = f.project(k=2)
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=src, format="vqa")
    assert _problems(err) == ["v2_mscoco_val2014_annotations.json [annotations[2], question_id 393225000]: "
                              "no question with question_id 393225000 in v2_OpenEnded_mscoco_val2014_questions.json"]
    assert not Prompt.objects.exists()


def test_vqa_split_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(ImportRejected, match=r"no \*_questions.json \(VQA questions\) for split train"):
        import_bundle(project=f.project(k=2), path=_vqa_folder(tmp_path / "vqa"), format="vqa", split="train")


# --- RefCOCO ------------------------------------------------------------------------------------------

def _refcoco_folder(root, ann_id=1719310):
    refs = [
        {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": ann_id, "ref_id": 0,
         "image_id": 581857, "split": "train", "category_id": 1, "sentences": [
             {"tokens": ["the", "lady"], "raw": "THE LADY WITH THE BLUE SHIRT", "sent_id": 0, "sent": "the lady with the blue shirt"},
             {"tokens": ["lady"], "raw": "lady w back to us", "sent_id": 1, "sent": "lady w back to us"}]},
        {"sent_ids": [2], "file_name": "COCO_train2014_000000581857_17.jpg", "ann_id": 1719311, "ref_id": 1,
         "image_id": 581857, "split": "testA", "category_id": 1,
         "sentences": [{"tokens": ["man"], "raw": "man on left", "sent_id": 2, "sent": "man on left"}]},
    ]
    instances = {"info": {}, "licenses": [], "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
                 "images": [{"license": 1, "file_name": "COCO_train2014_000000581857.jpg", "height": 30, "width": 40,
                             "id": 581857}],
                 "annotations": [
                     {"segmentation": [[1, 1, 5, 5, 1, 5]], "area": 100.0, "iscrowd": 0, "image_id": 581857,
                      "bbox": [10.5, 4.0, 12.25, 20.0], "category_id": 1, "id": 1719310},
                     {"segmentation": [[1, 1, 5, 5, 1, 5]], "area": 50.0, "iscrowd": 0, "image_id": 581857,
                      "bbox": [0, 0, 8, 10], "category_id": 1, "id": 1719311}]}
    return _write(root, {"refcoco/refs(unc).json": refs, "refcoco/instances.json": instances,
                         "images/mscoco/images/train2014/COCO_train2014_000000581857.jpg": _jpeg(BLUE)})


def test_refcoco_expressions_become_grounding_prompts_with_their_box_as_ground_truth(tmp_path):
    from rlhf.engine.rewards import iou_reward

    proj = f.project(k=2)
    assert import_bundle(project=proj, path=_refcoco_folder(tmp_path / "data"), format="refcoco").prompts == 3
    first, _, third = _prompts(proj)
    assert first.text == GROUNDING_PROMPT.format(expression="the lady with the blue shirt")
    assert first.ground_truth["boxes"] == [[10.5, 4.0, 22.75, 24.0]] and first.ground_truth["category"] == "person"
    assert (first.split, third.split, first.external_id) == ("train", "eval", "0:0")
    # the reference answers in the form the IoU reward reads, and scores 1 against the ground truth
    assert iou_reward([first.text], first.reference, ground_truth=[first.ground_truth]) == [1.0]


def test_a_ref_whose_box_is_missing_is_refused_and_a_pickle_is_never_loaded(tmp_path):
    src = _refcoco_folder(tmp_path / "data", ann_id=42)
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=f.project(k=2), path=src, format="refcoco")
    assert _problems(err) == ["refcoco/refs(unc).json [refs[0], ref_id 0]: ann_id 42 has no box in refcoco/instances.json"]
    pickled = _write(tmp_path / "p", {"refs(unc).p": b"\x80\x04K\x01.", "instances.json": {}})
    with pytest.raises(ImportRejected, match="a Python pickle, which lensloop never loads"):
        import_bundle(project=f.project(k=2), path=pickled, format="refcoco")


# --- Hugging Face ---------------------------------------------------------------------------------------

def test_hf_imagefolder_with_metadata_jsonl_per_split(tmp_path):
    root = _write(tmp_path / "ds", {
        "train/metadata.jsonl": "\n".join(json.dumps(r) for r in [
            {"file_name": "a.png", "text": "a red square"},
            {"file_name": "sub/b.png", "question": "What colour is it?", "answer": "green", "id": "q-b"}]) + "\n",
        "train/a.png": f.png_bytes(RED), "train/sub/b.png": f.png_bytes(GREEN),
        "test/metadata.jsonl": json.dumps({"file_name": "c.png", "text": "blue"}) + "\n{oops\n",
        "test/c.png": f.png_bytes(BLUE),
    })
    proj = f.project(k=2)
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=root, format="hf")
    assert _problems(err) == ["test/metadata.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)"]
    report = import_bundle(project=proj, path=root, format="hf", mode="partial")
    assert (report.rows_imported, report.rows_skipped) == (3, 1)
    rows = [(p.text, p.reference, p.split, p.external_id) for p in _prompts(proj)]
    assert rows == [("Describe the image.", ["blue"], "eval", ""), ("Describe the image.", ["a red square"], "train", ""),
                    ("What colour is it?", ["green"], "train", "q-b")]


def test_hf_imagefolder_with_metadata_csv(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "caption"])
        writer.writerow(["images/a.jpg", "a red thing"])
        writer.writerow(["images/missing.jpg", "gone"])
    _write(root, {"images/a.jpg": _jpeg(RED)})
    proj = f.project(k=2)
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=proj, path=root, format="hf")
    (problem,) = _problems(err)
    assert problem.startswith("metadata.csv:3: image 'images/missing.jpg'")
    assert import_bundle(project=proj, path=root, format="hf", limit=1).prompts == 1
    assert _prompts(proj)[0].reference == ["a red thing"]


def _hf_dataset(n=3):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "id": datasets.Value("int64")})
    return datasets.Dataset.from_dict({
        "image": [{"bytes": f.png_bytes(c), "path": None} for c in (RED, GREEN, BLUE)][:n],
        "question": ["Which colour?", "Which colour is this?", "And this one?"][:n],
        "answer": ["red", "green", "blue"][:n], "id": [1, 2, 3][:n]}, features=features)


def test_hf_parquet_files_with_an_image_column(tmp_path):
    root = tmp_path / "hub"
    (root / "data").mkdir(parents=True)
    _hf_dataset().to_parquet(root / "data" / "train-00000-of-00001.parquet")
    _hf_dataset(1).to_parquet(root / "data" / "validation-00000-of-00001.parquet")
    proj = f.project(k=2)
    report = import_bundle(project=proj, path=_zip(tmp_path, root), format="hf")
    assert report.ok and report.prompts == 4 and report.images_new == 3 and report.images_reused == 0
    rows = [(p.text, p.reference, p.split, p.external_id) for p in _prompts(proj)]
    assert rows[:2] == [("Which colour?", ["red"], "train", "1"), ("Which colour is this?", ["green"], "train", "2")]
    assert rows[3] == ("Which colour?", ["red"], "eval", "1")
    only = f.project(k=2)
    assert import_bundle(project=only, path=root, format="hf", split="validation").prompts == 1


def test_hf_save_to_disk_dataset_dict(tmp_path):
    import datasets

    datasets.DatasetDict({"train": _hf_dataset(), "test": _hf_dataset(2)}).save_to_disk(str(tmp_path / "saved"))
    proj = f.project(k=2)
    report = import_bundle(project=proj, path=tmp_path / "saved", format="hf", split="train")
    assert report.ok and report.prompts == 3 and {p.split for p in _prompts(proj)} == {"train"}
    assert report.manifest.startswith("train/data-00000-of-00001.arrow")
    broken = f.project(k=2)
    (tmp_path / "saved" / "test" / "data-00000-of-00001.arrow").write_bytes(b"not arrow")
    with pytest.raises(ImportRejected) as err:
        import_bundle(project=broken, path=tmp_path / "saved", format="hf", split="test")
    assert _problems(err)[0].startswith("test/data-00000-of-00001.arrow: not an Arrow stream")
    assert not Prompt.objects.filter(project=broken).exists()


# --- the command line and the API ----------------------------------------------------------------------

def test_the_import_command_takes_format_split_and_limit(tmp_path, capsys):
    proj = f.project(k=2)
    src = _karpathy_flickr(tmp_path / "flickr")
    call_command("import", proj.slug, str(src), "--format", "karpathy", "--split", "train,val", "--limit", "1")
    assert "imported 1/1 rows" in capsys.readouterr().out
    with pytest.raises(CommandError, match="--split picks the splits of a standard dataset"):
        call_command("import", proj.slug, str(src), "--split", "train")
    with pytest.raises(CommandError, match="1 problem"):
        call_command("import", proj.slug, str(_vqa_folder(tmp_path / "vqa", drop_question=True)), "--format", "vqa")
    assert "[annotations[2], question_id 393225000]" in capsys.readouterr().err


def test_the_api_import_takes_a_format(tmp_path, client):
    """The import job's body runs here, in the test's transaction (tests/annotation/test_import_jobs.py runs
    it in a real worker)."""
    from annotation.services.import_jobs import import_job_run

    admin = f.user("imp-admin")
    proj = f.project(k=2, admins=[admin])
    client.force_login(admin)
    bundle = _zip(tmp_path, _coco_folder(tmp_path / "coco"))
    with open(bundle, "rb") as fh:
        response = client.post(f"/api/projects/{proj.slug}/imports/", {"file": fh, "format": "coco", "limit": "1"})
    assert response.status_code == 202, response.content
    assert import_job_run(response.json()["id"]) == "succeeded"
    report = client.get(response["Location"]).json()["report"]
    assert report["format"] == "coco" and report["prompts"] == 1
    with open(bundle, "rb") as fh:
        response = client.post(f"/api/projects/{proj.slug}/imports/", {"file": fh, "format": "vqa"})
    assert import_job_run(response.json()["id"]) == "rejected"
    assert "VQA questions" in json.dumps(client.get(response["Location"]).json()["report"])


def test_source_split_names_map_to_lensloop_splits():
    assert [lensloop_split(s) for s in ("train2017", "restval", "val2014", "testA", "test-dev2015", "validation",
                                        "dev", "unlabeled", None)] == ["train", "train", "eval", "eval", "eval",
                                                                        "eval", "eval", "", ""]


def test_the_import_page_offers_the_formats(client):
    admin = f.user("page-admin")
    proj = f.project(k=2, admins=[admin])
    client.force_login(admin)
    page = client.get(f"/projects/{proj.slug}/import/").content.decode()
    for value in ("manifest", "coco", "karpathy", "vqa", "refcoco", "hf"):
        assert f'<option value="{value}">' in page
    assert 'id="import-split"' in page and 'id="import-limit"' in page

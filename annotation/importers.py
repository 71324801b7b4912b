"""Standard datasets as import bundles: COCO Captions, Karpathy splits, VQA v2, RefCOCO and Hugging Face
``datasets`` (imagefolder, Parquet, ``save_to_disk``).

Each format is converted, record by record, into the rows of lensloop's own manifest
(``docs/import-export.md``) and handed to the import pipeline of ``annotation.services.imports``: the
same row validation (``_parse_row``), image checks, modes and report as a manifest. A problem names the
source file and the record (``Problem.record``), e.g. ``captions_val2017.json [annotations[3], id 38]``.

Rows carry no candidates (prompt-only): the policy's generate step samples them. References and ground
truth are kept. ``split`` picks the source's splits (comma-separated names, e.g. ``val2017`` or
``val,test``; a name without its year matches it, ``val`` matches ``val2017``); with ``heldout="source"``
a record of a train split (``train``, ``restval``) is imported as ``split: train`` and one of a held-out
split (``val``, ``validation``, ``dev``, ``test``, ``testA``, ``testB``, ``test-dev``) as ``split: eval``;
``heldout="hash"`` leaves the split to the project's held-out fraction.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import PurePosixPath

from django.conf import settings

from annotation.bundles import Bundle, BundleError, FolderBundle, ZipBundle

FORMATS = ("manifest", "coco", "karpathy", "vqa", "refcoco", "hf")
HELDOUT = ("source", "hash")
CAPTION_PROMPT = "Describe the image."  # the caption prompt of the demo world (rlhf/engine/demo/world.py)
GROUNDING_PROMPT = "Where is {expression}? Answer with its box [x0, y0, x1, y1] in pixels."
TRAIN_SPLITS = frozenset({"train", "training", "restval"})
EVAL_SPLITS = frozenset({"val", "valid", "validation", "dev", "test", "testa", "testb", "test-dev", "eval"})
MAX_SOURCE_BYTES = 2 * 1024**3

Where = tuple[str, "int | None", str]  # (file, line, record)


class SourceError(BundleError):
    """A source file that cannot be read at all (missing, malformed): the whole import is refused."""

    def __init__(self, file: str, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file
        self.reason = message


def lensloop_split(name: str | None) -> str:
    """``train`` or ``eval`` for a source split name (``val2017`` → ``eval``), ``""`` when unknown."""
    base = re.sub(r"\d+$", "", (name or "").strip().lower())
    if base in TRAIN_SPLITS:
        return "train"
    if base in EVAL_SPLITS:
        return "eval"
    return ""


class _Splits:
    def __init__(self, wanted: str | None):
        self.wanted = {w.strip().lower() for w in (wanted or "").split(",") if w.strip()}

    def __call__(self, name: str | None) -> bool:
        if not self.wanted:
            return True
        name = (name or "").lower()
        return name in self.wanted or re.sub(r"\d+$", "", name) in self.wanted

    def __str__(self) -> str:
        return ",".join(sorted(self.wanted))


# --- reading the bundle -------------------------------------------------------------------------------

def _find(bundle: Bundle, pattern: str, depth: int = 3) -> list[str]:
    """Files whose name matches ``pattern``, at most ``depth`` folders down, sorted."""
    found = []
    if isinstance(bundle, FolderBundle):
        root = bundle.root
        for folder, dirs, files in os.walk(root):
            rel = PurePosixPath(os.path.relpath(folder, root).replace(os.sep, "/"))
            level = 0 if str(rel) == "." else len(rel.parts)
            if level >= depth:
                dirs[:] = []
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [str(rel / f) if level else f for f in files if fnmatch(f, pattern)]
    elif isinstance(bundle, ZipBundle):
        found = [n for n in bundle.members if n.count("/") <= depth and fnmatch(n.rsplit("/", 1)[-1], pattern)]
    return sorted(found)


def _dir(name: str) -> str:
    """The folder of a bundle path, with a trailing slash (``""`` at the top)."""
    return name.rsplit("/", 1)[0] + "/" if "/" in name else ""


def _top_dirs(bundle: Bundle) -> list[str]:
    if isinstance(bundle, FolderBundle):
        return sorted(p.name + "/" for p in bundle.root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if isinstance(bundle, ZipBundle):
        return sorted({n.split("/", 1)[0] + "/" for n in bundle.members if "/" in n})
    return []


def _image_folder(bundle: Bundle, first: str | None, candidates: list[str]) -> str:
    """The folder (prefix) under which ``first`` (an image named by the source) lies; the first candidate
    when none holds it (each row then reports its missing image)."""
    tried = list(dict.fromkeys([*candidates, *_top_dirs(bundle)]))
    if first:
        for prefix in tried:
            if bundle.exists(prefix + first):
                return prefix
    return tried[0]


def _read(bundle: Bundle, name: str, limit: int = MAX_SOURCE_BYTES) -> bytes:
    try:
        return bundle.read(name, limit)
    except BundleError as exc:
        raise SourceError(name, str(exc).replace(f"{name!r} ", "")) from None


def _json(bundle: Bundle, name: str):
    data = _read(bundle, name)
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(name, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SourceError(name, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


def _need(data, name: str, keys: dict[str, type], what: str) -> None:
    if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in keys.items()):
        need = ", ".join(f"{k!r} ({t.__name__})" for k, t in keys.items())
        raise SourceError(name, f"not {what}: the file's top object needs {need}")


def _one(found: list[str], pattern: str, label: str, what: str, wanted: _Splits | None = None) -> list[str]:
    if not found:
        for_split = f" for split {wanted}" if wanted and wanted.wanted else ""
        raise SourceError(label, f"no {pattern} ({what}){for_split} in the bundle")
    return found


class ConvertedBundle(Bundle):
    """A source bundle seen through a converter: ``manifest_rows`` yields the import pipeline's rows, and
    ``read`` serves the images that live inside data files (Parquet, Arrow) under names ``file#row``."""

    def __init__(self, inner: Bundle, label: str, records: Callable[[], Iterator[tuple[Where, dict | None, str | None]]]):
        self.inner = inner
        self.label = label
        self.refused = inner.refused
        self._records = records
        self._embedded: dict[str, bytes] = {}  # the current row's embedded image, read right after its row

    def embed(self, name: str, data: bytes) -> None:
        self._embedded = {name: data}

    def exists(self, name: str) -> bool:
        return name in self._embedded or self.inner.exists(name)

    def read(self, name: str, limit: int) -> bytes:
        data = self._embedded.pop(name, None)
        if data is None:
            return self.inner.read(name, limit)
        if len(data) > limit:
            raise BundleError(f"{name!r} is {len(data):,} bytes, over the limit of {limit:,}")
        return data

    def manifest_rows(self, k: int):
        import pyarrow as pa

        from annotation.services.imports import _parse_row

        records = self._records()
        n = 0
        while True:
            try:
                where, raw, problem = next(records)
            except StopIteration:
                return
            except SourceError as exc:  # a data file that cannot be read past this point
                yield (exc.file, None, ""), None, exc.reason
                return
            except pa.ArrowException as exc:
                yield (self.label, None, ""), None, f"cannot read the data: {exc}"
                return
            n += 1
            if problem is not None:
                yield where, None, problem
                continue
            try:
                yield where, _parse_row(raw, n, k), None
            except ValueError as exc:
                yield where, None, str(exc)

    def close(self) -> None:
        self.inner.close()


def convert(bundle: Bundle, format: str, *, source: str | None = None, split: str | None = None,
            heldout: str = "source") -> ConvertedBundle:
    """``bundle`` read as ``format``; ``source`` names its main file when it holds several. Raises
    ``SourceError`` (a ``BundleError``) when the source cannot be read at all."""
    if format not in FORMATS or format == "manifest":
        raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
    if heldout not in HELDOUT:
        raise ValueError(f"heldout must be one of {HELDOUT}, not {heldout!r}")
    wanted = _Splits(split)

    def split_of(name: str | None) -> dict:
        value = lensloop_split(name) if heldout == "source" else ""
        return {"split": value} if value else {}

    reader = {"coco": _coco, "karpathy": _karpathy, "vqa": _vqa, "refcoco": _refcoco, "hf": _hf}[format]
    return reader(bundle, source, wanted, split_of)


def _clean_texts(values) -> list[str]:
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


# --- COCO Captions ------------------------------------------------------------------------------------

def _coco(bundle, source, wanted, split_of):
    files = [source] if source else _find(bundle, "captions_*.json")
    files = [f for f in files if wanted(re.sub(r"^captions_", "", PurePosixPath(f).stem))]
    files = _one(files, "captions_*.json", bundle.label, "COCO Captions", wanted)
    loaded = []
    for name in files:
        data = _json(bundle, name)
        _need(data, name, {"images": list, "annotations": list}, "COCO Captions")
        sub = re.sub(r"^captions_", "", PurePosixPath(name).stem)
        base = _dir(_dir(name)[:-1]) if _dir(name) else ""
        first = next((i.get("file_name") for i in data["images"] if isinstance(i, dict)), None)
        prefix = _image_folder(bundle, first, [f"{base}{sub}/", f"{base}images/{sub}/", f"{base}images/", base,
                                               _dir(name)])
        loaded.append((name, sub, data, prefix))

    def records():
        for name, sub, data, prefix in loaded:
            captions: dict[object, list[str]] = {}
            bad = []
            ids = {i.get("id") for i in data["images"] if isinstance(i, dict)}
            for n, ann in enumerate(data["annotations"]):
                where = (name, None, f"annotations[{n}], id {ann.get('id') if isinstance(ann, dict) else '?'}")
                if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
                    bad.append((where, None, "an annotation needs a non-empty 'caption'"))
                elif ann.get("image_id") not in ids:
                    bad.append((where, None, f"image_id {ann.get('image_id')!r} is not among the file's images"))
                else:
                    captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
            for n, img in enumerate(data["images"]):
                ident = img.get("id") if isinstance(img, dict) else None
                where = (name, None, f"images[{n}], id {ident}")
                if ident is None or not isinstance(img.get("file_name"), str):
                    yield where, None, "an image needs an 'id' and a 'file_name'"
                    continue
                yield where, {"image": prefix + img["file_name"], "prompt": CAPTION_PROMPT,
                              "reference": captions.get(ident, []), "id": str(ident), **split_of(sub)}, None
            yield from bad

    return ConvertedBundle(bundle, ", ".join(files), records)


# --- Karpathy splits (dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json) ----------------

def _karpathy(bundle, source, wanted, split_of):
    files = [source] if source else _find(bundle, "dataset_*.json")
    files = _one(files, "dataset_*.json", bundle.label, "Karpathy split")
    if len(files) > 1:
        raise SourceError(bundle.label, f"several Karpathy files ({', '.join(files)}); name one with --manifest")
    name = files[0]
    data = _json(bundle, name)
    _need(data, name, {"images": list}, "a Karpathy split file")
    images = [i for i in data["images"] if isinstance(i, dict)]
    first = next((f"{i['filepath']}/{i.get('filename')}" if i.get("filepath") else i.get("filename")
                  for i in images), None)
    base = _dir(name)
    prefix = _image_folder(bundle, first, [base, f"{base}images/", f"{base}flickr30k-images/",
                                           f"{base}Flickr8k_Dataset/", f"{base}Flicker8k_Dataset/", ""])

    def records():
        for n, img in enumerate(data["images"]):
            if isinstance(img, dict) and not wanted(img.get("split")):
                continue
            filename = img.get("filename") if isinstance(img, dict) else None
            where = (name, None, f"images[{n}], {filename or 'no filename'}")
            if not isinstance(filename, str) or not isinstance(img.get("sentences"), list):
                yield where, None, "an image needs a 'filename' and a list of 'sentences'"
                continue
            refs = []
            for s in img["sentences"]:
                if isinstance(s, dict):
                    refs.append(s.get("raw") or " ".join(t for t in s.get("tokens") or [] if isinstance(t, str)))
            path = f"{img['filepath']}/{filename}" if img.get("filepath") else filename
            ident = img.get("cocoid", filename)
            yield where, {"image": prefix + path, "prompt": CAPTION_PROMPT, "reference": _clean_texts(refs),
                          "id": str(ident), **split_of(img.get("split"))}, None

    return ConvertedBundle(bundle, name, records)


# --- VQA v2 -------------------------------------------------------------------------------------------

_VQA_SUB = re.compile(r"_((?:train|val|test-dev|test)\d{4})_(questions|annotations)\.json$")


def _vqa(bundle, source, wanted, split_of):
    qfiles = [source] if source else [f for f in _find(bundle, "*_questions.json") if "Complementary" not in f]
    qfiles = [f for f in qfiles if wanted((_VQA_SUB.search(f) or [None, ""])[1])]
    qfiles = _one(qfiles, "*_questions.json", bundle.label, "VQA questions", wanted)
    afiles = {m[1]: f for f in _find(bundle, "*_annotations.json") if (m := _VQA_SUB.search(f))}
    loaded = []
    for qname in qfiles:
        questions = _json(bundle, qname)
        _need(questions, qname, {"questions": list}, "VQA questions")
        sub = questions.get("data_subtype") or (_VQA_SUB.search(qname) or [None, ""])[1]
        aname = afiles.get(sub)
        annotations = None
        if aname:
            annotations = _json(bundle, aname)
            _need(annotations, aname, {"annotations": list}, "VQA annotations")
        imgsub = sub.replace("test-dev", "test")
        first = next((q.get("image_id") for q in questions["questions"] if isinstance(q, dict)), None)
        first = f"COCO_{imgsub}_{first:012d}.jpg" if isinstance(first, int) else None
        bases = list(dict.fromkeys([_dir(qname), _dir(_dir(qname)[:-1]) if _dir(qname) else ""]))
        prefix = _image_folder(bundle, first, [p for b in bases for p in (f"{b}{imgsub}/", f"{b}images/{imgsub}/",
                                                                          f"{b}Images/{imgsub}/", f"{b}images/", b)])
        loaded.append((qname, sub, imgsub, questions, aname, annotations, prefix))

    def records():
        for qname, sub, imgsub, questions, aname, annotations, prefix in loaded:
            by_question: dict[object, dict] = {}
            bad = []
            asked = {q.get("question_id") for q in questions["questions"] if isinstance(q, dict)}
            for n, ann in enumerate(annotations["annotations"] if annotations else []):
                qid = ann.get("question_id") if isinstance(ann, dict) else None
                where = (aname, None, f"annotations[{n}], question_id {qid}")
                if qid not in asked:
                    bad.append((where, None, f"no question with question_id {qid!r} in {qname}"))
                elif not isinstance(ann.get("answers"), list):
                    bad.append((where, None, "an annotation needs a list of 'answers'"))
                else:
                    by_question[qid] = ann
            for n, q in enumerate(questions["questions"]):
                qid = q.get("question_id") if isinstance(q, dict) else None
                where = (qname, None, f"questions[{n}], question_id {qid}")
                if not isinstance(q, dict) or not isinstance(q.get("image_id"), int) or qid is None:
                    yield where, None, "a question needs an integer 'image_id' and a 'question_id'"
                    continue
                row = {"image": f"{prefix}COCO_{imgsub}_{q['image_id']:012d}.jpg", "prompt": q.get("question"),
                       "id": str(qid), **split_of(sub)}
                if annotations is not None:
                    ann = by_question.get(qid)
                    if ann is None:
                        yield where, None, f"the question has no annotation in {aname}"
                        continue
                    answers = _clean_texts(a.get("answer") for a in ann["answers"] if isinstance(a, dict))
                    common = Counter(answers).most_common(1)
                    best = ann.get("multiple_choice_answer") or (common[0][0] if common else None)
                    row["reference"] = [best] if isinstance(best, str) and best.strip() else []
                    row["ground_truth"] = {"answers": answers, "answer_type": ann.get("answer_type"),
                                           "question_type": ann.get("question_type")}
                yield where, row, None
            yield from bad

    return ConvertedBundle(bundle, ", ".join(q for q, *_ in loaded), records)


# --- RefCOCO / RefCOCO+ / RefCOCOg (refs as JSON, boxes from COCO instances) ----------------------------

def _refcoco(bundle, source, wanted, split_of):
    refs_files = [source] if source else _find(bundle, "refs*.json")
    if not refs_files and _find(bundle, "refs*.p"):
        pickled = _find(bundle, "refs*.p")[0]
        raise SourceError(pickled, "a Python pickle, which lensloop never loads (unpickling can run code); "
                          "convert it once to JSON: python -c \"import json, pickle, sys; "
                          "json.dump(pickle.load(open(sys.argv[1], 'rb')), open(sys.argv[2], 'w'))\" "
                          "'refs(unc).p' 'refs(unc).json'")
    refs_files = _one(refs_files, "refs*.json", bundle.label, "RefCOCO referring expressions")
    if len(refs_files) > 1:
        raise SourceError(bundle.label, f"several refs files ({', '.join(refs_files)}); name one with --manifest")
    name = refs_files[0]
    instances = [f for f in _find(bundle, "instances*.json")]
    instances.sort(key=lambda f: (_dir(f) != _dir(name), f))  # the one beside the refs first
    iname = _one(instances, "instances*.json", bundle.label, "COCO instances with the boxes")[0]
    refs = _json(bundle, name)
    if not isinstance(refs, list):
        raise SourceError(name, "not RefCOCO refs: the file must hold a JSON list of refs")
    inst = _json(bundle, iname)
    _need(inst, iname, {"images": list, "annotations": list}, "COCO instances")
    files = {i.get("id"): i.get("file_name") for i in inst["images"] if isinstance(i, dict)}
    boxes = {a.get("id"): a for a in inst["annotations"] if isinstance(a, dict)}
    categories = {c.get("id"): c.get("name") for c in inst.get("categories") or [] if isinstance(c, dict)}
    first = next(iter(files.values()), None)
    sub = (re.match(r"COCO_([a-z]+\d{4})_", first or "") or [None, "train2014"])[1]
    base = _dir(_dir(name)[:-1]) if _dir(name) else ""
    prefix = _image_folder(bundle, first, [f"{base}{sub}/", f"{base}images/{sub}/", f"{base}images/mscoco/images/{sub}/",
                                           f"{base}images/", base, f"{sub}/", f"images/mscoco/images/{sub}/", ""])

    def records():
        for n, ref in enumerate(refs):
            if isinstance(ref, dict) and not wanted(ref.get("split")):
                continue
            ref_id = ref.get("ref_id") if isinstance(ref, dict) else None
            where = (name, None, f"refs[{n}], ref_id {ref_id}")
            if not isinstance(ref, dict) or not isinstance(ref.get("sentences"), list) or not ref["sentences"]:
                yield where, None, "a ref needs a list of 'sentences'"
                continue
            ann = boxes.get(ref.get("ann_id"))
            if ann is None or not isinstance(ann.get("bbox"), list) or len(ann["bbox"]) != 4:
                yield where, None, f"ann_id {ref.get('ann_id')!r} has no box in {iname}"
                continue
            if ref.get("image_id") not in files:
                yield where, None, f"image_id {ref.get('image_id')!r} is not among the images of {iname}"
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]
            truth = {"boxes": [box], "category": categories.get(ref.get("category_id")), "ref_id": ref_id,
                     "ann_id": ref.get("ann_id")}
            for s in ref["sentences"]:
                text = (s.get("sent") or s.get("raw") or "").strip() if isinstance(s, dict) else ""
                sent_id = s.get("sent_id") if isinstance(s, dict) else None
                swhere = (name, None, f"refs[{n}], ref_id {ref_id}, sent_id {sent_id}")
                if not text:
                    yield swhere, None, "a sentence needs its text ('sent' or 'raw')"
                    continue
                yield swhere, {"image": prefix + files[ref["image_id"]],
                               "prompt": GROUNDING_PROMPT.format(expression=text.rstrip(".?! ")),
                               "reference": [json.dumps([round(v) if v == int(v) else v for v in box])],
                               "ground_truth": truth, "id": f"{ref_id}:{sent_id}", **split_of(ref.get("split"))}, None

    return ConvertedBundle(bundle, name, records)


# --- Hugging Face datasets ----------------------------------------------------------------------------

PROMPT_COLUMNS = ("prompt", "question", "query", "instruction")
REFERENCE_COLUMNS = ("reference", "references", "answer", "answers", "caption", "captions", "text", "sentences")
IMAGE_COLUMNS = ("image", "images", "img", "picture")


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return _clean_texts([value])
    if isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, dict):
                v = v.get("answer") or v.get("raw") or v.get("text") or v.get("caption")
            out.append(v)
        return _clean_texts(out)
    return []


def _hf_row(record: dict, image: str, split: str | None, split_of) -> dict:
    """A manifest row from a Hugging Face record; the columns it reads are listed in docs/import-export.md."""
    question = next((record[c] for c in PROMPT_COLUMNS if isinstance(record.get(c), str) and record[c].strip()), None)
    row = {"image": image, "prompt": question or CAPTION_PROMPT, **split_of(split)}
    ref_col = next((c for c in REFERENCE_COLUMNS if _texts(record.get(c))), None)
    truth = record.get("ground_truth")
    if truth not in (None, ""):
        row["ground_truth"] = truth
    if isinstance(record.get("multiple_choice_answer"), str):  # VQA-style: the most common answer, all kept
        row["reference"] = [record["multiple_choice_answer"]]
        if ref_col and "ground_truth" not in row:
            row["ground_truth"] = {"answers": _texts(record[ref_col])}
    elif ref_col:
        row["reference"] = _texts(record[ref_col])
    ident = next((record[c] for c in ("id", "question_id") if record.get(c) not in (None, "")), None)
    if ident is not None:
        row["id"] = str(ident)
    if record.get("candidates"):
        row["candidates"] = record["candidates"]
    return row


_PARQUET_SPLIT = re.compile(r"^([A-Za-z][A-Za-z_]*?)(?:[-_]\d+)+(?:-of-\d+)?$")


def _split_from_path(name: str) -> str | None:
    path = PurePosixPath(name)
    m = _PARQUET_SPLIT.match(path.stem)
    if m:
        return m[1]
    if lensloop_split(path.stem):
        return path.stem
    parent = path.parent.name
    return parent if lensloop_split(parent) else None


def _image_field(schema) -> str | None:
    import pyarrow as pa

    names = schema.names
    for candidate in IMAGE_COLUMNS:
        if candidate in names:
            return candidate
    for f in schema:
        t = f.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            t = t.value_type
        if (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return f.name
    return None


def _image_bytes(value) -> tuple[bytes | None, str | None]:
    """(bytes, path) of an HF image cell: ``{"bytes", "path"}``, raw bytes, or a list of them (first)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict):
        return (bytes(value["bytes"]) if value.get("bytes") else None), value.get("path")
    return None, None


def _arrow_source(bundle: Bundle, name: str):
    import pyarrow as pa

    if isinstance(bundle, FolderBundle):
        path = bundle._resolve(name)
        if path is None or not path.is_file():
            raise SourceError(name, "is not in the import folder")
        return pa.memory_map(str(path))
    return pa.BufferReader(_read(bundle, name))


def _table_records(converted_holder: list, bundle, name, batches, split, split_of):
    """Rows of Arrow record batches whose images are inline (``file#row``) or paths in the bundle."""
    column = None
    row = 0
    for batch in batches:
        column = column or _image_field(batch.schema)
        if column is None:
            raise SourceError(name, f"no image column (looked for {', '.join(IMAGE_COLUMNS)} or a column of image bytes)")
        for record in batch.to_pylist():
            where = (name, None, f"row {row}")
            data, path = _image_bytes(record.get(column))
            if data is not None:
                image = f"{name}#{row}"
                converted_holder[0].embed(image, data)
            elif path:
                image = _dir(name) + path if not bundle.exists(path) else path
            else:
                row += 1
                yield where, None, f"column {column!r} holds no image"
                continue
            yield where, _hf_row(record, image, split, split_of), None
            row += 1


def _hf(bundle, source, wanted, split_of):
    import pyarrow as pa
    import pyarrow.parquet as pq

    holder: list[ConvertedBundle] = []
    if source:
        kind = "parquet" if source.endswith(".parquet") else "arrow" if source.endswith("state.json") else "folder"
        files = [source]
    elif states := _find(bundle, "state.json"):
        kind, files = "arrow", states
    elif parquets := _find(bundle, "*.parquet", depth=4):
        kind, files = "parquet", parquets
    else:
        kind = "folder"
        files = _find(bundle, "metadata.jsonl") or _find(bundle, "metadata.csv")
    if not files:
        raise SourceError(bundle.label, "no Hugging Face dataset here: no state.json (save_to_disk), *.parquet, "
                          "or metadata.jsonl / metadata.csv (imagefolder)")

    if kind == "arrow":
        sources = []
        for state_name in files:
            state = _json(bundle, state_name)
            _need(state, state_name, {"_data_files": list}, "a save_to_disk state.json")
            split = state.get("_split") or PurePosixPath(state_name).parent.name or None
            if wanted(split):
                sources += [(_dir(state_name) + f["filename"], split) for f in state["_data_files"] if isinstance(f, dict)]
    else:
        sources = [(f, _split_from_path(f) if kind == "parquet" else (PurePosixPath(f).parent.name or None))
                   for f in files]
        sources = [(f, s) for f, s in sources if wanted(s)]
    if not sources:
        raise SourceError(bundle.label, f"no {kind} data for split {wanted}")

    def records():
        for name, split in sources:
            if kind == "parquet":
                try:
                    batches = pq.ParquetFile(_arrow_source(bundle, name)).iter_batches(batch_size=64)
                except pa.ArrowException as exc:
                    raise SourceError(name, f"not a Parquet file ({exc})") from None
                yield from _table_records(holder, bundle, name, batches, split, split_of)
            elif kind == "arrow":
                try:
                    batches = pa.ipc.open_stream(_arrow_source(bundle, name))
                except pa.ArrowException as exc:
                    raise SourceError(name, f"not an Arrow stream of save_to_disk ({exc})") from None
                yield from _table_records(holder, bundle, name, batches, split, split_of)
            else:
                yield from _metadata_records(bundle, name, split, split_of)

    converted = ConvertedBundle(bundle, ", ".join(name for name, _ in sources), records)
    holder.append(converted)
    return converted


def _metadata_records(bundle, name, split, split_of):
    text = _read(bundle, name, settings.LENSLOOP_MAX_UPLOAD_BYTES).decode("utf-8-sig", errors="replace")
    base = _dir(name)
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        lines = ((reader.line_num, raw) for raw in reader)
    else:
        def parsed():
            for line, content in enumerate(text.splitlines(), start=1):
                if content.strip():
                    try:
                        yield line, json.loads(content)
                    except json.JSONDecodeError as exc:
                        yield line, f"not valid JSON: {exc.msg} (column {exc.colno})"
        lines = parsed()
    for line, raw in lines:
        where = (name, line, "")
        if isinstance(raw, str):
            yield where, None, raw
            continue
        if not isinstance(raw, dict) or not isinstance(raw.get("file_name"), str) or not raw["file_name"].strip():
            yield where, None, "each record needs a 'file_name' (the image, relative to the metadata file)"
            continue
        if name.endswith(".csv"):
            raw = {k: v for k, v in raw.items() if k is not None and v not in (None, "")}
            for key in ("reference", "references", "answers", "captions", "candidates"):
                if isinstance(raw.get(key), str) and raw[key].strip().startswith("["):
                    with contextlib.suppress(json.JSONDecodeError):
                        raw[key] = json.loads(raw[key])
        yield where, _hf_row(raw, base + raw["file_name"].strip(), split, split_of), None

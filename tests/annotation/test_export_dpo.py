"""The export round trip the issue asks for: Parquet export → `datasets.load_dataset("parquet")` →
TRL's DPOTrainer takes it unchanged and trains a tiny VLM for a few steps."""

import uuid

import pytest

from annotation.services import queue
from annotation.services.exports import ExportFilter, write_export
from tests import factories as f

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _tiny_vlm(folder):
    """An untrained tiny LLaVA saved and loaded back the way users load their own models."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rlhf.engine.config import BuildDemoConfig
    from rlhf.engine.demo import TINY_BUILD
    from rlhf.engine.demo.build import build_model, build_processor, build_tokenizer

    cfg = BuildDemoConfig(**TINY_BUILD)
    tokenizer = build_tokenizer()
    build_model(cfg, tokenizer).save_pretrained(folder)
    build_processor(cfg, tokenizer).save_pretrained(folder)
    return AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


def test_a_parquet_export_trains_with_dpo_trainer_unchanged(tmp_path):
    datasets = pytest.importorskip("datasets")
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")

    alice = f.user("alice")
    proj = f.project(k=2, annotators=[alice])
    for i in range(4):
        f.task(proj, texts=[f"one shape: a small red circle {i}.", "two shapes: a large blue square."])
    while (a := queue.next_task(annotator=alice, project=proj)) is not None:
        queue.submit_ranking(
            annotator=alice, task_id=a.task_id, ordering=[[c] for c in a.task.candidate_ids], client_uuid=uuid.uuid4()
        )
    write_export(ExportFilter(project=proj), "parquet", tmp_path / "export")

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "export/data/*.parquet"), split="train")
    assert len(ds) == 4
    # the quality figures ride along as nullable float columns (null: no quality job has run)
    assert {"confidence", "agreement"} <= set(ds.column_names) and ds["confidence"] == [None] * 4
    model, processor = _tiny_vlm(tmp_path / "model")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
        use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", remove_unused_columns=False,
        max_length=None, logging_steps=1,
    )
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "DPO did not change any parameter"

"""Evaluation: labelled examples, the shared data folder, the built and real sets, and ranking metrics.

Used by the benchmarks, the tests and head detection; the retrieval core never imports it.
"""

from __future__ import annotations

from shared_core.evaluation.data import REAL_TASKS, babi_task_name, resolve_task_path, shared_data_dir
from shared_core.evaluation.examples import (
    GoldSpan,
    LabelledExample,
    content_words,
    gold_units,
    group_by_document,
    load_jsonl,
    shares_content_word,
    word_count,
)
from shared_core.evaluation.hotpot import hotpot_examples
from shared_core.evaluation.loading import load_examples
from shared_core.evaluation.metrics import (
    expected_gains,
    hit_at_k,
    ndcg_at_k,
    rank_by_score,
    recall_at_k,
    tie_aware_metrics,
)
from shared_core.evaluation.real import covidqa_examples, load_real, qmsum_examples, real_split
from shared_core.evaluation.synthetic import (
    BabiFact,
    BabiQuestion,
    BabiStory,
    babilong_examples,
    load_babi,
)

__all__ = [
    "REAL_TASKS",
    "BabiFact",
    "BabiQuestion",
    "BabiStory",
    "GoldSpan",
    "LabelledExample",
    "babi_task_name",
    "babilong_examples",
    "content_words",
    "covidqa_examples",
    "expected_gains",
    "gold_units",
    "group_by_document",
    "hit_at_k",
    "hotpot_examples",
    "load_babi",
    "load_examples",
    "load_jsonl",
    "load_real",
    "ndcg_at_k",
    "qmsum_examples",
    "rank_by_score",
    "real_split",
    "recall_at_k",
    "resolve_task_path",
    "shared_data_dir",
    "shares_content_word",
    "tie_aware_metrics",
    "word_count",
]

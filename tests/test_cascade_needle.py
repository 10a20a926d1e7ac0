"""The needle benchmark's method set-up: equal KV slots for the bounded methods, head masks, summaries."""

from __future__ import annotations

import torch

from benchmarks.cascade_needle import head_mask, markdown, method_config, summarise
from shared_core.config import CascadeConfig
from shared_core.engine.heads import HeadSelection

BASE = CascadeConfig(sink_tokens=16, cascades=4, window=64, stride=256)


def test_bounded_methods_hold_the_same_slots_and_truncation_reads_the_window() -> None:
    assert method_config("cascade", BASE, 5000, 8000) == BASE
    end = method_config("cascade_end", BASE, 5000, 8000)
    streaming = method_config("streaming", BASE, 5000, 8000)
    assert end.capacity == streaming.capacity == BASE.capacity and end.scoring == streaming.scoring == "end"
    assert streaming.cascades == 1  # one sliding window behind the sinks: StreamingLLM
    truncate = method_config("truncate", BASE, 5000, 8000)
    assert truncate.capacity == truncate.stride == 8000 and truncate.sink_tokens == 0
    full = method_config("full", BASE, 5000, 8000)
    assert full.capacity == 5000 and full.scoring == "end"  # nothing evicted, the query sees every token


def test_head_mask_selects_listed_heads_and_whole_layers() -> None:
    mask = head_mask(HeadSelection({3: (1, 4), 5: None}, "test"), num_heads=6)
    assert mask.shape == (2, 6) and mask.dtype == torch.bool
    assert mask[0].nonzero().flatten().tolist() == [1, 4] and bool(mask[1].all())


def test_summary_averages_per_size_depth_method() -> None:
    rows = [
        {
            "size": 8000,
            "depth": 0.5,
            "method": "cascade",
            "prompt_tokens": 8100,
            "units": 200,
            "hit5": h,
            "recall5": h / 2,
            "best_gold_rank": r,
            "seconds": 10.0,
            "peak_mb": 100.0,
            "scored_fraction": 1.0,
        }
        for h, r in ((1.0, 2), (0.0, 8))
    ]
    (row,) = summarise(rows)
    assert row["n"] == 2 and row["hit5"] == 0.5 and row["best_gold_rank"] == 5 and row["units"] == 200
    assert "| 8100 | 50% | cascade | 2 | 0.50 | 0.25 | 5 of 200 |" in markdown([row], BASE)


def test_gold_that_no_method_pass_scored_is_reported_as_not_scored() -> None:
    row = {
        "size": 8000,
        "depth": 0.1,
        "method": "streaming",
        "prompt_tokens": 8100,
        "units": 200,
        "hit5": 0.0,
        "recall5": 0.0,
        "best_gold_rank": 150,
        "seconds": 1.0,
        "peak_mb": 1.0,
        "scored_fraction": 0.5,
    }
    assert "| not scored |" in markdown(summarise([row]), BASE)  # rank 150 > the 100 scored units
    assert "| 150 of 200 |" in markdown(summarise([{**row, "gold_scored": True}]), BASE)

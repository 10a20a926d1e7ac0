"""Documents past the window (or the memory budget): one strided pass through the cascading KV cache for the
queries at hand, kept (`cascade_state`) so later queries are replayed chunk by chunk without reading the document
again, a grown document resumed inside its last shared chunk, and each query's raw resident scores cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from shared_core.config import RetrieverConfig, parse_bytes
from shared_core.document import Document
from shared_core.engine.cascade_scoring import cascade_token_scores
from shared_core.engine.cascade_state import CascadeState, ResumePoint, replay_scores, resume_point, supports_replay
from shared_core.engine.heads import HeadSelection
from shared_core.engine.prompt import DocumentTokens, QueryTokens
from shared_core.engine.scoring import PerLayer
from shared_core.engine.state_store import StateStore, state_key
from shared_core.lru import LRUCache
from shared_core.models.loading import LoadedModel

T = TypeVar("T")


@dataclass(frozen=True)
class _Queries:
    """What one pass or replay scores: the model, each query part's (ids, query rows) and the heads read."""

    model: LoadedModel
    suffixes: list[tuple[torch.Tensor, torch.Tensor]]
    selection: HeadSelection


class PastWindow:
    """The engine's reads of documents past the window: kept passes (`states`) and cached raw scores (`results`)."""

    def __init__(self, config: RetrieverConfig, count: Callable[..., None]) -> None:
        self.config = config
        self._count = count
        cascade = config.cascade
        self.states = StateStore(parse_bytes(cascade.reuse_memory) or 0, None, parse_bytes(cascade.reuse_disk_limit))
        # raw (uncalibrated) scores per (document, query, heads): repeated queries and the "N/A" calibration cost
        # nothing once computed
        self.results: LRUCache[PerLayer] = LRUCache(max(config.attention.kv_cache_size, 8) * 16)

    def share(self, other: PastWindow) -> None:
        """Use `other`'s kept passes and cached scores (their keys hold everything they depend on); this one's
        config still decides how its own passes are read."""
        self.states, self.results = other.states, other.results

    def clear(self) -> None:
        """Drop the kept passes and cached scores held in memory."""
        self.results.clear()
        self.states.clear()

    def family(self, model: LoadedModel, prompt_key: str, selection: HeadSelection) -> str:
        """What a kept pass depends on besides the text: model, dtype (and quantization), template, the cascade's
        settings and the query adapter (a kept pass holds the instruction's keys, which the adapter changes)."""
        adapter = selection.adapter.digest if selection.adapter else "frozen"
        return state_key(model.name, model.precision, prompt_key, self.config.cascade.scoring_key, adapter)

    def raw(
        self,
        model: LoadedModel,
        prompt_key: str,
        doc: Document,
        tokens: DocumentTokens,
        parts: dict[str, QueryTokens],
        selection: HeadSelection,
    ) -> dict[str, PerLayer]:
        """Raw resident scores of each query past the window: cached, replayed from a kept pass, or one new pass."""
        cfg = self.config
        family = self.family(model, prompt_key, selection)
        heads = selection.key

        def result_key(q: str) -> tuple[Any, ...]:
            return (family, str(model.device), doc.content_hash, q, heads, cfg.attention.query_rows)

        out: dict[str, PerLayer] = {}
        missing = {}
        for q, part in parts.items():
            hit = self.results.get(result_key(q))
            if hit is not None:
                out[q] = hit
            else:
                missing[q] = part
        if not missing:
            return out
        skey = state_key(family, doc.content_hash)
        state = self.states.get(skey) if cfg.cascade.reuse else None
        if state is not None and state.n_layers <= selection.deepest:
            state = None
        queries = list(missing)
        suffixes = [(torch.tensor(missing[q].ids), torch.tensor(missing[q].rows)) for q in queries]
        job = _Queries(model, suffixes, selection)
        if state is not None:
            scores = self._replay(job, state)
        else:
            scores, state = self._cascade_pass(job, tokens, family)
            if state is not None:
                self.states.put(skey, family, state)
        for i, q in enumerate(queries):
            per_layer: PerLayer = {}
            for j, layer in enumerate(selection.layers):
                scored = scores[i, j, :, tokens.doc_start : tokens.doc_start + tokens.n_doc_tokens]
                chosen = selection.per_layer[layer]
                per_layer[layer] = scored[list(chosen)] if chosen is not None else scored
            self.results.put(result_key(q), per_layer)
            out[q] = per_layer
        return out

    def _replay(self, job: _Queries, state: CascadeState) -> torch.Tensor:
        """The queries' scores replayed chunk by chunk from a kept pass (no read of the document)."""
        scores = self._with_progress(
            len(state.chunks),
            "replay",
            "chunk",
            lambda progress: replay_scores(
                job.model.model,
                state,
                job.suffixes,
                job.selection.layers,
                progress=progress,
                batch_size=self.config.attention.query_batch,
                adapter=job.selection.adapter,
            ),
        )
        self._count(cascade_replays=1, cascade_replayed_queries=len(job.suffixes))
        return scores

    def _cascade_pass(
        self, job: _Queries, tokens: DocumentTokens, family: str
    ) -> tuple[torch.Tensor, CascadeState | None]:
        """One strided pass of the document through the cascading cache for these queries (kept when configured)."""
        cfg = self.config.cascade
        ids = torch.tensor(tokens.ids, dtype=torch.long)
        resume = self._resume_point(job.model, ids, family, job.selection.deepest) if cfg.reuse else None
        res = self._with_progress(
            len(tokens.ids),
            "cascade",
            "tok",
            lambda progress: cascade_token_scores(
                job.model.model,
                ids,
                job.suffixes,
                job.selection.layers,
                cfg,
                progress=progress,
                keep=cfg.reuse,
                resume=resume,
                batch_size=self.config.attention.query_batch,
                adapter=job.selection.adapter,
            ),
        )
        self._count(cascade_passes=1, cascade_tokens=len(tokens.ids) - (resume.start if resume is not None else 0))
        return res.scores, res.state

    def _with_progress(self, total: int, desc: str, unit: str, run: Callable[[Callable[[int, int], None]], T]) -> T:
        """`run(progress)` in inference mode, `progress(done, total)` moving a bar (shown with `show_progress`)."""
        bar = tqdm(total=total, desc=desc, unit=unit, disable=not self.config.show_progress)
        try:
            with torch.inference_mode():
                return run(lambda done, _total: bar.update(done - bar.n))
        finally:
            bar.close()

    def _resume_point(self, model: LoadedModel, ids: torch.Tensor, family: str, deepest: int) -> ResumePoint | None:
        """Of the kept passes in memory deep enough for these heads, the one a pass over `ids` takes most from."""
        if not supports_replay(model.model):
            return None
        best: ResumePoint | None = None
        for state in self.states.in_memory(family):
            point = resume_point(state, ids) if state.n_layers > deepest else None
            if point is not None and (best is None or point.start > best.start):
                best = point
        return best

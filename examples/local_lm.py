"""What the examples share: attnret's small offline LM (SmolLM2) as a local generator, and the cited spans of
LlamaIndex source nodes. Examples put this folder on `sys.path` (a script's own folder is there already)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

_loaded: list[Any] = []


def load() -> Any:
    """A small offline LM (SmolLM2-135M-Instruct, installed with attnret's offline models), loaded once: a
    `shared_core.models.loading.LoadedModel`. Small on purpose: the examples show retrieval, not generation."""
    if not _loaded:
        from shared_core.config import ModelConfig
        from shared_core.models.loading import load_model

        _loaded.append(load_model(ModelConfig(name="smollm2-135m-instruct")))
    return _loaded[0]


def generate(prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of a one-turn chat through the model's chat template."""
    import torch

    loaded = load()
    tokenizer = loaded.tokenizer
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = {k: v.to(loaded.device) for k, v in ids.items()}
    with torch.no_grad():
        out = loaded.model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())


def node_spans(source_nodes: Sequence[Any]) -> list[dict[str, Any]]:
    """LlamaIndex source nodes as numbered spans: text, score, offsets in the file, and why attnret kept them."""
    return [
        {
            "n": n,
            "text": item.node.get_content(),
            "score": item.score,
            "start": item.node.start_char_idx,
            "end": item.node.end_char_idx,
            "reasons": item.node.metadata.get("attnret_reasons", []),
        }
        for n, item in enumerate(source_nodes, start=1)
    ]


def print_answer(result: dict[str, Any], cited: str) -> None:
    """Print an example's question, answer and numbered cited spans (`cited` names them, e.g. "Cited spans (file)")."""
    print(f"Q: {result['question']}\nA: {result['answer']}\n\n{cited}:")
    for span in result["spans"]:
        print(f"[{span['n']}] chars {span['start']}-{span['end']} {span['reasons']}: {span['text']}")


def answer_from_command_line(answer: Callable[[str], dict[str, Any]], question: str, cited: str) -> None:
    """An example's `main`: answer the question given on the command line (or `question`) and print it."""
    logging.basicConfig(level=logging.WARNING)
    print_answer(answer(sys.argv[1] if len(sys.argv) > 1 else question), cited)

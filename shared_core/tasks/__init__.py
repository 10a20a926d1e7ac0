"""Tasks wing: what the facade offers beyond ranking one document's units: scoring a candidate set in one prompt
(`candidates`), pruning documents to a token budget (`pruning`) and the explanation page (`explain`).

A task gets the retriever it works with as an argument typed by the `Scorer` protocol (`tasks.scorer`), so it
imports the views, engine, text and config wings and the foundation, never the facade.
"""

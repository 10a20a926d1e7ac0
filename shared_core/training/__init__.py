"""Training wing: learning what to read from labelled examples: head detection, head training and query adapters.

It drives the facade (`AttentionRetriever`) over the evaluation data, so it sits above it, beside `batch` and the
CLI; nothing in the core below imports it.
"""

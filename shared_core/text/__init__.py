"""Text wing: cutting a document into units (sentences, paragraphs) with exact offsets, and the spaCy pipelines.

Imports only the foundation modules (`shared_core.document`, `shared_core.validation`); no model, no config.
"""

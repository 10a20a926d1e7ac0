"""Models wing: loading a causal LM (hub id, local folder, GGUF file, named offline model) and what differs between
model families (rotary embeddings, layer kinds, the decoder stack).

Imports the config wing and the foundation; never the engine, which asks for the attention function it needs.
"""

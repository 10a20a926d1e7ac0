"""Engine wing: reading a document with the model and turning the query rows' attention into token scores.

The capture hook, the prompt layout, head selection, query batches, the cascading KV cache past the window (its
state, replays and kept passes) and the attention engine that drives them. Imports the models, text and config
wings and the foundation; never a view, a task or the facade.
"""

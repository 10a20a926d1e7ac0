"""Texts several test files share: a short candidate set with one relevant chunk (the key) among unrelated ones."""

KEY = "Mary left the brass key on the desk in the office."
CHUNKS = [
    "The lighthouse keeper painted the door green.",
    "Ships passed the harbour at dawn while gulls circled.",
    KEY,
    "John travelled to the garden where the roses were in bloom.",
]
KEY_QUERY = "Where did Mary leave the brass key?"

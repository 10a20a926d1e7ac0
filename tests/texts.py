"""Texts several test files share: a short candidate set with one relevant chunk (the key) among unrelated ones."""

KEY = "Mary left the brass key on the desk in the office."
CHUNKS = [
    "The lighthouse keeper painted the door green.",
    "Ships passed the harbour at dawn while gulls circled.",
    KEY,
    "John travelled to the garden where the roses were in bloom.",
]
KEY_QUERY = "Where did Mary leave the brass key?"

NEEDLE = "Ravi keeps the spare key to the boathouse under the blue flowerpot by the gate."
NEEDLE_QUERY = "Where is the spare key hidden?"
VILLAGE = [
    "The village of Lowmere lies at the end of a narrow valley.",
    "Most houses there were built from the grey stone of the old quarry.",
    "In spring the river floods the lower meadows for a week or two.",
    "The bakery opens at six and sells out of rye bread by noon.",
    "Children walk to the school in the next village along the towpath.",
    "A bus to the market town runs twice a day, except on Sundays.",
    "The church bell was recast in 1923 after a crack appeared.",
    "Sheep graze on the hills above the village all summer.",
    "The old mill now houses a small museum of farm tools.",
    "Every August the villagers hold a regatta on the lake.",
]
"""Filler sentences around `NEEDLE` for needle tests."""
ATTENTION_ONLY = {"dense": {"enabled": False}, "lexical": {"enabled": False}, "entities": {"enabled": False}}
"""Config sections that leave the attention view alone."""

"""The conformance harness's standard inputs and limits (see :mod:`mmcore.testing`)."""

#: The kinds the suite checks, in the order cases are listed.
CHECKED_KINDS = ("preprocessor", "tokenizer", "encoder", "fusion", "head", "objective")
#: The harness's standard modalities and their token widths (fusions).
MODALITY_WIDTHS = {"alpha": 16, "beta": 12}
#: Width of the Tokens an encoder receives when its tiny config names no ``width``.
ENCODER_WIDTH = 16
#: Width of every standard pooled embedding (``alpha``, ``beta``, ``fused``).
EMBEDDING_WIDTH = 8
#: The standard head objectives may name, and its number of classes.
HEAD_NAME, NUM_CLASSES = "logits", 3
BATCH_SIZE = 3
SEED = 0
#: Batch invariance tolerance (absolute and relative).
TOLERANCE = 1e-5



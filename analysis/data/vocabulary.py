"""Every word the synthetic data can produce; the embedded tokenizer is built from this list."""

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

FUNCTION_WORDS = (
    "a", "an", "the", "and", "is", "are", "there", "at", "in", "on", "of", "with", "image", "picture",
    "photo", "shows", "object", "objects", "shape", "colour", "what", "which", "how", "many", "where",
    "find", "select", "region", "digit", "handwritten", "answer", "question", "classify", "describe",
    "caption", "this", "it", "one", "next", "to", "below", "above", "scene", "contains", "here",
)
PUNCTUATION = (".", ",", "?", ":")

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(COLOURS + SHAPES + SIZES + ROWS + COLUMNS + NUMBERS + FUNCTION_WORDS + PUNCTUATION)
)

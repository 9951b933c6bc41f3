import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PRISM_LIT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "prism_lit"))

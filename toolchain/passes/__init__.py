"""Model passes. Each takes a documented config dataclass and returns a new model artifact.

The algorithm is written once here; each backend supplies its hooks (e.g. `backend.quantize`).
"""

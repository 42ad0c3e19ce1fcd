"""bigmodel: the whole life of a Transformer, from raw text to a model that writes."""

from bigmodel.errors import BigModelError

__all__ = ["BigModelError"]
__version__ = "0.1.0"

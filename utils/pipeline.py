"""The import path that model cards saved before utils/ was grouped into folders print
(``from utils.pipeline import load_pipeline``). The model lives in utils/model/pipeline.py; this alias keeps those
cards' snippet working for releases already on the Hub. New code imports ``utils.model.pipeline``."""

from .model.pipeline import *  # noqa: F401,F403
from .model.pipeline import load_pipeline  # noqa: F401  (named: the cards' snippet imports it)

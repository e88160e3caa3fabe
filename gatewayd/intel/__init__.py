"""On-prem models: the fast linear stage, the MiniLM encoder stage, and the engine that runs them inline.

``build_classifier`` is what the daemon and the CLI call when ``analysis.classifier = "models"``;
``check_models`` is what ``gatewayd check-config`` calls. Model files are read from ``analysis.models_dir``
or, when that is empty, from the ``models/`` folder of the source tree. Nothing is fetched from a network.
"""

from __future__ import annotations

from pathlib import Path

from gatewayd.analysis.facts import Classifier
from gatewayd.intel.classifier import ModelClassifier
from gatewayd.intel.engine import FILES, ModelLoadError, Models
from gatewayd.settings import AnalysisSection

__all__ = ["FILES", "ModelClassifier", "ModelLoadError", "build_classifier", "check_models", "models_dir"]

BUNDLED = Path(__file__).resolve().parents[2] / "models"


def models_dir(settings: AnalysisSection) -> Path:
    return Path(settings.models_dir) if settings.models_dir else BUNDLED


def build_classifier(settings: AnalysisSection, fallback: Classifier | None = None) -> ModelClassifier:
    """Load the models (``ModelLoadError`` names a bad file) and wrap them with the rules fallback."""
    models = Models.load(models_dir(settings), threads=settings.threads)
    if fallback is None:
        from gatewayd.analysis.rules import RulesClassifier

        fallback = RulesClassifier()
    return ModelClassifier(
        models,
        fallback=fallback,
        budget=settings.budget,
        max_batch=settings.max_batch,
        batch_wait=settings.batch_wait,
        cache_size=settings.cache_size,
    )


def check_models(settings: AnalysisSection) -> list[str]:
    """Problems with the model files, each naming the file ([] when everything loads)."""
    try:
        Models.load(models_dir(settings), threads=1)
    except ModelLoadError as exc:
        return [str(exc)]
    return []

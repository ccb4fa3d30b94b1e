"""Which weights a serving model started from, and what that means for its pre-annotations.

/health and /ui say it in words, because it decides what a first-time user
sees: with COCO weights, boxes for the labels COCO knows from the first task;
with random initialisation (no pretrained file could be had, see
``model.detector.WeightsReport``), no useful pre-annotation at all until the
first trainings. The facts come from each version's meta (``weights``,
``weights_requested``, ``parent``), so a version loaded from disk after a
restart is described as well as one this process just built.
"""

from __future__ import annotations

from pathlib import Path

from model.detector import WEIGHT_SOURCES, WeightsReport
from model.registry import ModelRegistry
from model.version_meta import VersionMeta

WARM_START = " (warm start)"
NOT_LOADED = "no model loaded yet: a project's model is made or loaded at its first prediction or job"


def describe_source(weights: str | None, backbone: str | None) -> tuple[str, str]:
    """(source, meaning) of base weights: a ``WEIGHT_SOURCES`` name, a version's warm start or a checkpoint path."""
    arch = f" ({backbone})" if backbone else ""
    if weights == "coco":
        return (
            f"COCO weights{arch}",
            "pre-annotations from the start for labels that match a COCO class (person, car, dog, ...); "
            "other labels get boxes after the first trainings",
        )
    if weights == "imagenet":
        return (
            f"ImageNet backbone{arch}, detection head untrained",
            "no useful pre-annotations until the first trainings (which learn faster than from random weights)",
        )
    if weights == "none":
        return "random initialisation", "no pre-annotations until the first trainings"
    if weights and weights.endswith(WARM_START):
        parent = weights[: -len(WARM_START)]
        return (
            f"trained version {parent}, warm start",
            f"the labels {parent} knew keep what it learned; new labels get boxes after the next training",
        )
    if weights:
        return (
            f"checkpoint {Path(weights).name}",
            f"weights of a checkpoint saved by this backend (WEIGHTS={weights}): pre-annotations for the labels "
            "it was trained on",
        )
    return "unknown weights", "this version's meta does not say where its weights came from"


def describe_version(name: str, meta: VersionMeta, report: WeightsReport | None = None) -> dict:
    """What version ``name`` started from, in words, plus the raw facts.

    Returns:
        dict: ``source`` and ``meaning`` (sentences for people), ``version``,
        ``used`` and ``requested`` (the WEIGHTS values), ``fell_back`` (the
        requested pretrained weights could not be had) and ``reasons``.
    """
    used, requested = meta.weights, meta.weights_requested or meta.weights
    fell_back = requested in WEIGHT_SOURCES and used in WEIGHT_SOURCES and requested != used
    if meta.trained:
        origin, _ = describe_source(used, meta.backbone)
        source = f"trained version {name}"
        meaning = f"trained on {len(meta.annotation_ids or [])} annotated tasks of this project (started from {origin})"
    else:
        source, meaning = describe_source(used, meta.backbone)
        if fell_back:
            source += f" ({requested} weights were asked for but could not be had)"
    reasons = list(report.reasons) if report is not None and report.used == used else []
    return {
        "version": name,
        "source": source,
        "meaning": meaning,
        "used": used,
        "requested": requested,
        "fell_back": fell_back,
        "reasons": reasons,
    }


def describe_configured(weights: str, backbone: str) -> dict:
    """What WEIGHTS asks for, before any model is loaded (whether the file can be had is known only then)."""
    source, meaning = describe_source(weights, backbone)
    return {
        "version": None,
        "source": f"{source} (configured: WEIGHTS={weights})",
        "meaning": f"{meaning}; {NOT_LOADED}",
        "used": None,
        "requested": weights,
        "fell_back": False,
        "reasons": [],
    }


def summary(projects: dict[str, dict], configured: str, backbone: str) -> dict:
    """One description for people over projects' ``describe_version``: the project's own when there is one,
    each project's in turn when there are several, the configured WEIGHTS when there is none."""
    if not projects:
        return {**describe_configured(configured, backbone), "projects": {}}
    if len(projects) == 1:
        (only,) = projects.values()
        source, meaning = only["source"], only["meaning"]
    else:
        source = "; ".join(f"project {p}: {d['source']}" for p, d in projects.items())
        meaning = "; ".join(f"project {p}: {d['meaning']}" for p, d in projects.items())
    return {
        "source": source,
        "meaning": meaning,
        "fell_back": any(d["fell_back"] for d in projects.values()),
        "projects": projects,
    }


def serving_weights(registry: ModelRegistry, configured: str) -> dict:
    """/health's ``weights``: what the models serving in this process started from (``summary``).

    Reads only what is in memory: /health must stay fast, and it loads no model.
    """
    projects = {}
    for project in registry.serving():
        served = registry.peek(project)
        if served is not None:
            projects[project] = describe_version(
                served.name, served.version.meta, registry.weights_reports.get(project)
            )
    return summary(projects, configured, registry.config.backbone)

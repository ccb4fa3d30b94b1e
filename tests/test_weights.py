"""Tests of backend/weights.py: the words /health and /ui use for the weights a serving model started from."""

from __future__ import annotations

import pytest

from backend.weights import describe_configured, describe_version, summary
from model.detector import WeightsReport
from model.version_meta import VersionMeta

BACKBONE = "mobilenet_v3_320_fpn"


def _base(weights: str, requested: str | None = None) -> VersionMeta:
    return VersionMeta(labels=["car"], backbone=BACKBONE, weights=weights, weights_requested=requested or weights)


class TestDescribeVersion:
    def test_random_initialisation_after_a_fallback_says_so_and_why(self):
        report = WeightsReport("coco", "none", ("coco weights for x are not available offline",))
        found = describe_version("v0001", _base("none", "coco"), report)
        assert found["source"].startswith("random initialisation") and "coco weights were asked for" in found["source"]
        assert found["meaning"] == "no pre-annotations until the first trainings"
        assert found["fell_back"] is True and found["reasons"] == list(report.reasons)
        assert (found["version"], found["used"], found["requested"]) == ("v0001", "none", "coco")

    def test_random_initialisation_asked_for_is_no_fallback(self):
        found = describe_version("v0001", _base("none"))
        assert found["source"] == "random initialisation" and found["fell_back"] is False

    @pytest.mark.parametrize(
        "weights, source, meaning",
        [
            ("coco", f"COCO weights ({BACKBONE})", "pre-annotations from the start for labels that match a COCO class"),
            (
                "imagenet",
                f"ImageNet backbone ({BACKBONE}), detection head untrained",
                "no useful pre-annotations until the first trainings",
            ),
            (
                "/models/3/v0007",
                "checkpoint v0007",
                "weights of a checkpoint saved by this backend (WEIGHTS=/models/3/v0007)",
            ),
            ("v0004 (warm start)", "trained version v0004, warm start", "the labels v0004 knew keep what it learned"),
        ],
    )
    def test_each_kind_of_start(self, weights, source, meaning):
        found = describe_version("v0005", _base(weights))
        assert found["source"] == source and found["meaning"].startswith(meaning)
        assert found["fell_back"] is False

    def test_a_trained_version_names_itself_and_its_first_weights(self):
        meta = VersionMeta(labels=["car"], backbone=BACKBONE, weights="none", parent="v0002", annotation_ids=[4, 5, 6])
        found = describe_version("v0003", meta)
        assert found["source"] == "trained version v0003"
        assert found["meaning"] == "trained on 3 annotated tasks of this project (started from random initialisation)"

    def test_a_report_of_other_weights_gives_no_reasons(self):
        """The process built a model from COCO, but the version on disk says otherwise: its reasons do not apply."""
        found = describe_version("v0002", _base("imagenet"), WeightsReport("coco", "none", ("offline",)))
        assert found["reasons"] == []


class TestSummary:
    def test_no_model_yet_describes_the_configuration(self):
        found = summary({}, "coco", BACKBONE)
        assert found["source"] == f"COCO weights ({BACKBONE}) (configured: WEIGHTS=coco)"
        assert "no model loaded yet" in found["meaning"] and found["projects"] == {}
        assert found == {**describe_configured("coco", BACKBONE), "projects": {}}

    def test_one_project_is_the_summary(self):
        one = describe_version("v0001", _base("none", "coco"))
        found = summary({"3": one}, "coco", BACKBONE)
        assert (found["source"], found["meaning"], found["fell_back"]) == (one["source"], one["meaning"], True)

    def test_several_projects_are_named_each(self):
        found = summary(
            {"3": describe_version("v0001", _base("coco")), "4": describe_version("v0002", _base("none"))},
            "coco",
            BACKBONE,
        )
        assert found["source"] == f"project 3: COCO weights ({BACKBONE}); project 4: random initialisation"
        assert found["fell_back"] is False

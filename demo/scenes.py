"""The demo's project: digit scenes from bench/ as Label Studio tasks, and their ground truth.

The scenes are the active-learning benchmark's (``bench.active_learning.dataset``: real MNIST
digits composed into 128 px scenes, ten classes), written under Label Studio's document root
and imported as ``/data/local-files/?d=...`` tasks. The ground truth stays with the demo (it
is not in the task data): the scripted annotator submits it as each task's annotation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from backend.predictions import region
from bench.active_learning.dataset import DigitScenesConfig, write_digit_scenes

LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))
FROM_NAME, TO_NAME, VALUE_KEY = "label", "image", "image"

LABEL_CONFIG = (
    "<View>\n"
    f'  <Image name="{TO_NAME}" value="${VALUE_KEY}" zoom="true"/>\n'
    f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
    + "".join(f'    <Label value="{label}"/>\n' for label in LABELS)
    + "  </RectangleLabels>\n</View>\n"
)

#: The benchmark's "uniform" scenes (bench/active_learning/configs.py: digits of 28 to 64 px, class
#: skew 2), with at most 4 digits and one distractor: 40 annotated scenes hold every class several
#: times and a CPU model learns them in minutes. 60 of them, as each ranking runs the detector over
#: every unlabeled one.
SCENES = DigitScenesConfig(
    image_size=128,
    pool_images=60,
    test_images=0,
    min_digits=2,
    max_digits=4,
    min_scale=28,
    max_scale=64,
    clutter=1,
    class_skew=2.0,
    seed=26,
)


@dataclass(frozen=True)
class SceneTask:
    """One scene: its task URL and its ground-truth boxes (pixels, x1 y1 x2 y2) with their labels."""

    name: str
    url: str
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[str, ...]

    def task(self) -> dict:
        """The task to import."""
        return {"data": {VALUE_KEY: self.url}}

    def result(self) -> list[dict]:
        """The ground truth as an annotation result (Label Studio's percent coordinates)."""
        return [
            region(box, label, self.width, self.height, FROM_NAME, TO_NAME)
            for box, label in zip(self.boxes, self.labels)
        ]


def write_scenes(
    document_root: Path | str, subdir: str = "demo-scenes", config: DigitScenesConfig = SCENES
) -> list[SceneTask]:
    """Render ``config``'s pool under ``document_root/subdir`` and return its scenes as tasks."""
    folder = write_digit_scenes(config, Path(document_root) / subdir, splits=("pool",))
    doc = json.loads((folder / "pool.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    regions: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        regions.setdefault(a["image_id"], []).append(a)
    scenes = []
    for image in doc["images"]:
        own = regions.get(image["id"], [])
        scenes.append(
            SceneTask(
                name=image["file_name"],
                url=f"/data/local-files/?d={subdir}/images/{image['file_name']}",
                width=image["width"],
                height=image["height"],
                boxes=tuple((x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in own)),
                labels=tuple(names[a["category_id"]] for a in own),
            )
        )
    return scenes

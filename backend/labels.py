"""The project's labelling interface, read with label-studio-sdk's LabelInterface.

The detector's classes are the labels of the config's RectangleLabels control,
in order. A Label's ``predicted_values="car,truck"`` names the model classes
(COCO names for the pretrained head) it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface

from backend.errors import BadRequest


@dataclass(frozen=True)
class ProjectLabels:
    """What predictions must name: the control, its image, its labels.

    Attributes:
        from_name (str): the RectangleLabels control's name.
        to_name (str): the Image object's name.
        value_key (str): the task data key holding the image URL (``$image`` -> ``image``).
        labels (tuple[str, ...]): the detector's classes, 1..C in this order.
        aliases (dict[str, list[str]]): label -> model class names from ``predicted_values``.
    """

    from_name: str
    to_name: str
    value_key: str
    labels: tuple[str, ...]
    aliases: dict[str, list[str]]


def parse_label_config(config: str) -> ProjectLabels:
    """Find the first RectangleLabels control and its Image.

    Raises:
        BadRequest: the XML is invalid, or has no RectangleLabels on an Image.
    """
    if not isinstance(config, str) or not config.strip():
        raise BadRequest("label_config must be a non-empty XML string")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises its own XML and validation errors
        raise BadRequest(f"label_config is not a valid Label Studio config: {exc}") from None
    for control in interface.controls:
        images = [o for o in control.objects if o.tag == "Image"]
        if control.tag == "RectangleLabels" and images and control.labels:
            return ProjectLabels(
                from_name=control.name,
                to_name=images[0].name,
                value_key=images[0].value.lstrip("$"),
                labels=tuple(control.labels),
                aliases=_aliases(control.labels_attrs),
            )
    raise BadRequest("label_config has no RectangleLabels control with labels on an Image")


def _aliases(labels_attrs: dict) -> dict[str, list[str]]:
    aliases = {}
    for name, tag in labels_attrs.items():
        raw = tag.attr.get("predicted_values", "")
        names = [part.strip() for part in raw.split(",") if part.strip()]
        if names:
            aliases[name] = names
    return aliases

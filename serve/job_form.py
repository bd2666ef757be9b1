"""POST /v1/jobs: the form's fields, its OpenAPI description, and its conversion into a checked JobRequest.

Field types are declared here; value ranges are the runtime's (GenerationSettings.validate), so the API and the
CLI refuse the same values with the same messages. Photos go through the runtime's own decoding and checks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from instantid_edge.runtime.errors import ConfigError
from instantid_edge.runtime.styles import StyleBook

from .errors import BadForm
from .jobs import JobRequest
from .uploads import Part

PHOTO_FIELDS = {
    "face": "Photo of the visitor's face (JPEG, PNG or WebP); its largest face gives the identity.",
    "pose": "Optional photo whose face keypoints set the pose and the output size.",
}


class JobForm(BaseModel):
    """The text fields of a job. Give a prompt, a style, or both (the style wraps the prompt)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, max_length=2000, description="What to generate.")
    style: str | None = Field(None, max_length=100, description="A name from GET /v1/styles.")
    negative_prompt: str | None = Field(None, max_length=2000)
    seed: int | None = Field(None, description="Default: a random seed (reported in the job's status).")
    steps: int | None = None
    guidance: float | None = Field(None, description="Classifier-free guidance; runs only when > 1.")
    ip_scale: float | None = Field(None, description="Image-adapter strength.")
    identitynet_scale: float | None = Field(None, description="IdentityNet strength.")
    width: int | None = Field(None, description="Give both or neither (default: from the photo).")
    height: int | None = None
    sampler: str | None = None
    decoder: str | None = Field(
        None, description="full (the VAE) or tiny (TAESD-XL, in packages exported with it). Default: the profile's."
    )


def request_body_schema() -> dict[str, Any]:
    """The multipart request body for OpenAPI: the photo parts and JobForm's fields (absent = not given)."""
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": text} for name, text in PHOTO_FIELDS.items()
    }
    for name, schema in JobForm.model_json_schema()["properties"].items():
        plain = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
        properties[name] = {**plain, **{k: schema[k] for k in ("description",) if k in schema}}
    body = {"type": "object", "required": ["face"], "properties": properties, "additionalProperties": False}
    return {"required": True, "content": {"multipart/form-data": {"schema": body}}}


def job_request(parts: dict[str, Part], styles: StyleBook) -> JobRequest:
    """Decode and check the photos and fields (CPU work: call it off the event loop)."""
    from instantid_edge.runtime.images import load_rgb_bytes

    if "face" not in parts or not parts["face"].data:
        raise BadForm("the form needs a `face` file part holding a photo")
    fields = {}
    for name, part in parts.items():
        if name in PHOTO_FIELDS:
            continue
        try:
            value = part.data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadForm(f"the field {name!r} is not UTF-8 text") from None
        if value.strip():
            fields[name] = value  # an empty form input means "not given"
    try:
        form = JobForm.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in exc.errors())
        raise BadForm(f"invalid form field(s): {problems}") from None
    given = form.model_dump(exclude_none=True)
    style_name = given.pop("style", None)
    if style_name is not None:
        given["prompt"], given["negative_prompt"] = styles.get(style_name).apply(
            given.get("prompt"), given.get("negative_prompt")
        )
    elif not given.get("prompt", "").strip():
        raise ConfigError("give a prompt, a style, or both")
    face = load_rgb_bytes(parts["face"].data, "the face photo")
    pose = load_rgb_bytes(parts["pose"].data, "the pose photo") if "pose" in parts and parts["pose"].data else None
    return JobRequest(face=face, pose=pose, settings=given, style=style_name)

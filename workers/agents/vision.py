"""The `vision` agent: an attached image goes to a vision model; offline, Pillow's facts about it answer."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Mapping

from events import attachments
from events.catalog import AGENT_TYPES
from events.envelope import text_map
from events.store import keyspace
from workers.agents.agent import AgentContext, AgentError, Tool, tool_loop
from workers.agents.imagefacts import ImageDecodeError, image_facts
from workers.agents.redis_client import agent_redis

SYSTEM = (
    "You are a vision assistant. Look at the attached image(s) and answer the user's question about them. "
    "Call image_facts for exact size, format, colours and camera data. Answer concisely."
)
MAX_INLINE_BYTES = 512 * 1024 * 1024  # the API bounded every image already; this only keeps parsing finite

Image = tuple[str, str, bytes]  # (label, media type, bytes)
Fetch = Callable[[str, str], Mapping[bytes, bytes] | None]  # (owner, attachment id) -> the upload's hash


def fetch_upload(owner: str, attachment_id: str) -> Mapping[bytes, bytes] | None:
    """An upload's hash, looked up under the job owner's name only (another user's id is simply not there)."""
    return agent_redis().hgetall(keyspace.attachment(owner, attachment_id)) or None


def job_images(job: Mapping[str, str], fetch: Fetch) -> list[Image]:
    """The job's images, in order; raises AgentError (which the user reads) when one cannot be had."""
    try:
        items = json.loads(job.get("attachments") or "[]")
        parsed = attachments.parse_all(items, MAX_INLINE_BYTES)
    except (ValueError, attachments.AttachmentError) as ex:
        raise AgentError(f"The job's attachments cannot be read: {ex}.") from None
    images: list[Image] = []
    for i, item in enumerate(parsed, 1):
        if isinstance(item, attachments.InlineImage):
            images.append((item.name or f"image {i}", item.media_type, item.data))
            continue
        found = fetch(job.get("owner", ""), item.attachment_id)
        if not found or b"data" not in found:
            raise AgentError(
                f"Attachment {item.attachment_id} is not among your uploads (they expire after a day); "
                "upload the image again with POST /api/v1/attachments."
            )
        meta = text_map({k: v for k, v in found.items() if k != b"data"})
        images.append((item.name or meta.get("name") or f"image {i}", meta["media_type"], found[b"data"]))
    if not images:
        raise AgentError(
            'The vision agent needs an image: add "attachments": [{"type": "image", "media_type": "image/png", '
            '"data_base64": "…"}] or an attachment_id from POST /api/v1/attachments.'
        )
    return images


def facts_tool(images: list[Image]) -> Tool:
    """The `image_facts` tool over this job's images (decoded once, on first call)."""
    cache: dict[int, str] = {}

    def run(args: Mapping[str, Any]) -> str:
        lines = []
        for i, (label, _, data) in enumerate(images):
            if i not in cache:
                try:
                    cache[i] = image_facts(data).summary()
                except ImageDecodeError as ex:
                    cache[i] = f"error: {ex}"
            lines.append(f"{label}: {cache[i]}")
        failed = [line for line in lines if ": error: " in line]
        if len(failed) == len(lines):
            raise ValueError(" ".join(line.split(": error: ", 1)[1] for line in failed))
        return "\n".join(lines)

    return Tool(
        name="image_facts",
        description="Exact facts of the attached images: format, size, colour mode, dominant colours, EXIF camera "
        "data (never location).",
        parameters={
            "type": "object",
            "properties": {"question": {"type": "string", "description": "What you want to know (optional)."}},
        },
        run=run,
    )


def user_content(query: str, images: list[Image]) -> list[dict[str, Any]]:
    """The user's message as content parts: the question, then each image as a data: URL."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": query}]
    for _, media_type, data in images:
        url = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


class VisionAgent:
    """Images from the job's attachments: shown to the model, and measured by the `image_facts` tool."""

    spec = AGENT_TYPES["vision"]
    name = spec.name

    def __init__(self, fetch: Fetch | None = None) -> None:
        self.fetch: Fetch = fetch or fetch_upload

    def run(self, ctx: AgentContext) -> str:
        """Answer `ctx.query` about the job's images."""
        images = job_images(ctx.job, self.fetch)
        # The offline model reads text only: it learns about the image through the tool, as a model may too.
        user = None if ctx.provider.name == "offline" else user_content(ctx.query, images)
        return tool_loop(ctx, SYSTEM, [facts_tool(images)], self.spec, user=user)

"""`multipart/form-data` bodies (the OpenAI images.edit upload), parsed with the standard
library's MIME parser.

FastAPI's `File()`/`Form()` need the python-multipart package, which the `serve` extra does not
install; `email.parser` is the maintained multipart parser every Python has. The body it parses
is already bounded by the route's `max_body_size`, and whatever it cannot make sense of is a
400 naming the field, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP

from service.parsing import BadValue

MAX_PARTS = 32


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    filename: str | None
    content_type: str

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadValue(self.name, f"{self.name} is not UTF-8 text") from e


def parse_form(content_type: str | None, body: bytes) -> dict[str, list[Part]]:
    """The parts of a multipart/form-data body by field name, in order."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise BadValue(
            "Content-Type",
            "send the request as multipart/form-data (an image file and the prompt), as the "
            "OpenAI client's images.edit does",
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise BadValue("Content-Type", "the multipart body has no parts (boundary missing?)")
    form: dict[str, list[Part]] = {}
    for count, part in enumerate(message.iter_parts(), start=1):
        if count > MAX_PARTS:
            raise BadValue("body", f"more than {MAX_PARTS} form fields")
        if not isinstance(part, EmailMessage):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        form.setdefault(name, []).append(
            Part(name, data, part.get_filename(), part.get_content_type())
        )
    return form


def field(form: dict[str, list[Part]], *names: str) -> Part | None:
    """The single part sent under any of `names` (e.g. "image" or "image[]")."""
    parts = [p for n in names for p in form.get(n, [])]
    if len(parts) > 1:
        raise BadValue(names[0], f"{names[0]} was sent {len(parts)} times; send one")
    return parts[0] if parts else None

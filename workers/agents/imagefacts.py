"""What Pillow can tell about an image: size, format, mode, frames, dominant colours and EXIF without location.

Images come from users, so decoding is bounded: only the four accepted formats are tried, the header is checked
before any pixel is decoded (a decompression bomb is refused by its declared size), the file's structure is
verified, and the colour count runs on a small thumbnail.
"""

from __future__ import annotations

import colorsys
import io
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, UnidentifiedImageError

from events.attachments import IMAGE_TYPES, MAX_PIXELS

THUMBNAIL = (128, 128)
COLOURS = 5
_EXIF_SHOWN = {
    "Make",
    "Model",
    "Software",
    "DateTime",
    "DateTimeOriginal",
    "Orientation",
    "ExposureTime",
    "FNumber",
    "ISOSpeedRatings",
    "FocalLength",
    "LensModel",
    "ImageDescription",
}
# Plain colour names by hue (degrees, upper bound of each band), for colours that are not greys.
_HUES = (
    (15, "red"),
    (45, "orange"),
    (65, "yellow"),
    (170, "green"),
    (200, "cyan"),
    (250, "blue"),
    (290, "purple"),
    (335, "magenta"),
    (360, "red"),
)


def colour_name(rgb: tuple[int, int, int]) -> str:
    """A plain name for `rgb` by hue, lightness and saturation ("red", "dark blue", "light grey", "brown")."""
    hue, lightness, saturation = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    if saturation < 0.15 or lightness < 0.08 or lightness > 0.95:
        if lightness < 0.08:
            return "black"
        if lightness > 0.95:
            return "white"
        return "dark grey" if lightness < 0.35 else "light grey" if lightness > 0.7 else "grey"
    name = next(n for bound, n in _HUES if hue * 360 < bound)
    if name == "orange" and lightness < 0.35:
        return "brown"
    if name == "red" and lightness > 0.75:
        return "pink"
    return f"dark {name}" if lightness < 0.25 else f"light {name}" if lightness > 0.75 else name


class ImageDecodeError(ValueError):
    """Raised when bytes cannot be read safely as an image (not an image, damaged, or too many pixels)."""


@dataclass(frozen=True)
class Colour:
    """One dominant colour and the share of the image it covers."""

    rgb: tuple[int, int, int]
    share: float

    @property
    def hex(self) -> str:
        """`#rrggbb`."""
        r, g, b = self.rgb
        return f"#{r:02x}{g:02x}{b:02x}"

    @property
    def name(self) -> str:
        """Its plain name."""
        return colour_name(self.rgb)


@dataclass(frozen=True)
class ImageFacts:
    """What one image is."""

    format: str
    width: int
    height: int
    mode: str
    frames: int
    colours: tuple[Colour, ...]
    exif: dict[str, str]
    location_removed: bool

    def summary(self) -> str:
        """The facts as one line of text (what the tool returns)."""
        colours = ", ".join(f"{c.name} {c.hex} {c.share:.0%}" for c in self.colours)
        parts = [f"{self.format} image, {self.width}x{self.height} pixels, mode {self.mode}"]
        if self.frames > 1:
            parts.append(f"{self.frames} frames")
        parts.append(f"dominant colours: {colours}")
        if self.exif:
            parts.append("EXIF: " + ", ".join(f"{k}={v}" for k, v in sorted(self.exif.items())))
        else:
            parts.append("no EXIF camera data")
        if self.location_removed:
            parts.append("location (GPS) tags present but withheld")
        return "; ".join(parts)


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(IMAGE_TYPES.values()))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageDecodeError(
                f"The image claims more pixels than the {MAX_PIXELS:,} this agent decodes (a possible "
                "decompression bomb); send a smaller image."
            ) from None
        except UnidentifiedImageError:
            raise ImageDecodeError("The attachment is not a readable PNG, JPEG, WebP or GIF image.") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"The image claims {width}x{height} pixels, more than the {MAX_PIXELS:,} this agent decodes (a "
            "possible decompression bomb); send a smaller image."
        )
    return image


def _colours(image: Image.Image) -> tuple[Colour, ...]:
    small = image.convert("RGB")
    small.thumbnail(THUMBNAIL)
    quantised = small.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT)
    palette = quantised.getpalette() or []
    counts = sorted(quantised.getcolors() or [], reverse=True)
    total = sum(n for n, _ in counts) or 1
    found = []
    for n, index in counts:
        at = int(index) * 3  # type: ignore[call-overload]  # a palette index (Pillow types it loosely)
        r, g, b = palette[at : at + 3]
        found.append(Colour((r, g, b), n / total))
    return tuple(found)


def _exif(image: Image.Image) -> tuple[dict[str, str], bool]:
    exif = image.getexif()
    location = ExifTags.Base.GPSInfo in exif
    tags = {ExifTags.TAGS.get(tag, str(tag)): value for tag, value in exif.items() if tag != ExifTags.Base.GPSInfo}
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    tags.update({ExifTags.TAGS.get(tag, str(tag)): value for tag, value in sub.items()})
    shown = {name: str(value).strip("\x00 ")[:80] for name, value in tags.items() if name in _EXIF_SHOWN}
    return {k: v for k, v in shown.items() if v}, location


def image_facts(data: bytes) -> ImageFacts:
    """Read `data` safely; raises ImageDecodeError with a sentence saying what is wrong."""
    try:
        _open(data).verify()  # checks the file's structure; the image must be opened again to be used
        image = _open(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            colours = _colours(image)
        exif, location = _exif(image)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as ex:
        raise ImageDecodeError(f"The image is damaged and cannot be decoded ({ex}).") from None
    return ImageFacts(
        format=image.format or "unknown",
        width=image.width,
        height=image.height,
        mode=image.mode,
        frames=int(getattr(image, "n_frames", 1)),
        colours=colours,
        exif=exif,
        location_removed=location,
    )

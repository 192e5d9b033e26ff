"""A picture of the sampler's tile grid over the image, numbered as the tile prompt lines count them."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from .regions import TileGrid

_COLOURS = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (255, 64, 255), (0, 220, 220))


def draw_tile_grid(image: Image.Image, grid: TileGrid, max_side: int = 1024) -> Image.Image:
    """``image`` resized to the grid's output shape (at most ``max_side`` px a side), each tile outlined in
    its own colour and labelled ``n (row,col)`` at its centre; overlapping tiles share pixels."""
    out_w, out_h = grid.output_size
    factor = min(1.0, max_side / max(out_w, out_h))
    size = (max(1, round(out_w * factor)), max(1, round(out_h * factor)))
    picture = image.convert("RGB").resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for index, (left, top, right, bottom) in enumerate(grid.boxes):
        colour = _COLOURS[index % len(_COLOURS)]
        inset = index % 3  # neighbours' shared borders stay visible
        box = [
            round(left * factor) + inset,
            round(top * factor) + inset,
            max(round(left * factor) + inset, round(right * factor) - 1 - inset),
            max(round(top * factor) + inset, round(bottom * factor) - 1 - inset),
        ]
        draw.rectangle(box, outline=colour, width=2)
        row, col = grid.position(index)
        label = f"{index + 1} ({row},{col})"
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        x0, y0, x1, y1 = draw.textbbox((cx, cy), label, font=font, anchor="mm")
        draw.rectangle([x0 - 2, y0 - 2, x1 + 2, y1 + 2], fill=(0, 0, 0))
        draw.text((cx, cy), label, fill=colour, font=font, anchor="mm")
    return picture

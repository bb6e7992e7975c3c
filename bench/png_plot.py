"""A tiny line-chart PNG writer with no dependency (zlib and struct), for the soak's
memory and freshness plots: panels stacked vertically, each with its title, axes, ticks
and a legend, in a 5x7 pixel font (upper case, digits, a few signs).

    write_chart("soak.png", [Panel("RSS (MIB)", [Series("PIPELINE", (31, 119, 180), [(0, 410), ...])])])
"""

import math
import struct
import zlib
from typing import NamedTuple

_FONT_ROWS = {
    "0": ".###.#...##..###.#.###..##...#.###.",
    "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####",
    "3": "#####...#...#.....#.....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.",
    "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.",
    "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.",
    "9": ".###.#...##...#.####....#...#..##..",
    "A": ".###.#...##...#######...##...##...#",
    "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.",
    "D": "###..#..#.#...##...##...##..#.###..",
    "E": "######....#....####.#....#....#####",
    "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####",
    "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.",
    "J": "..###...#....#....#....##..#..##...",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#",
    "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##.#.##...##...##...#",
    "N": "#...##...###..##.#.##..###...##...#",
    "O": ".###.#...##...##...##...##...#.###.",
    "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#",
    "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".#####....#.....###.....#....#####.",
    "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.",
    "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.###.###...#",
    "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..",
    "Z": "#####....#...#...#...#...#....#####",
    " ": "." * 35,
    ".": "." * 30 + "..#..",
    ",": "." * 25 + "..#...#...",
    "-": "." * 15 + "#####" + "." * 15,
    "+": "." * 5 + "..#....#..#####..#....#.." + "." * 5,
    ":": "." * 5 + "..#.." + "." * 10 + "..#.." + "." * 10,
    "%": "##...##..#...#...#...#...#..##...##",
    "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...",
    "/": "....#....#...#...#...#...#....#....",
    "=": "." * 10 + "#####" + "." * 5 + "#####" + "." * 10,
    "_": "." * 30 + "#####",
    ">": ".#.....#.....#.....#...#...#...#...",
    "<": "...#...#...#...#.....#.....#.....#.",
    "?": ".###.#...#....#...#...#.......#....",
}
# Each glyph is 7 rows of 5 pixels; pad or cut the hand-written rows to exactly 35.
FONT = {ch: (rows + "." * 35)[:35] for ch, rows in _FONT_ROWS.items()}
GLYPH_W, GLYPH_H, SCALE = 5, 7, 2

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (120, 120, 120), (225, 225, 225)
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


class Series(NamedTuple):
    name: str
    colour: tuple
    points: list  # [(x, y)]


class Panel(NamedTuple):
    title: str
    series: list
    x_label: str = "MINUTES"


class Canvas:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def dot(self, x: int, y: int, colour: tuple) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(colour)

    def rect(self, x0, y0, x1, y1, colour) -> None:
        for y in range(max(0, y0), min(self.height, y1)):
            for x in range(max(0, x0), min(self.width, x1)):
                self.dot(x, y, colour)

    def line(self, x0, y0, x1, y1, colour, thick: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error = dx + dy
        while True:
            for ox in range(thick):
                for oy in range(thick):
                    self.dot(x0 + ox, y0 + oy, colour)
            if x0 == x1 and y0 == y1:
                return
            double = 2 * error
            if double >= dy:
                error += dy
                x0 += sx
            if double <= dx:
                error += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, colour=BLACK) -> int:
        """Draws `text` with its top left at (x, y); returns its width in pixels."""
        start = x
        for ch in text.upper():
            rows = FONT.get(ch, FONT["?"])
            for row in range(GLYPH_H):
                for col in range(GLYPH_W):
                    if rows[row * GLYPH_W + col] == "#":
                        self.rect(
                            x + col * SCALE,
                            y + row * SCALE,
                            x + (col + 1) * SCALE,
                            y + (row + 1) * SCALE,
                            colour,
                        )
            x += (GLYPH_W + 1) * SCALE
        return x - start

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3])
            for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def text_width(text: str) -> int:
    return len(text) * (GLYPH_W + 1) * SCALE


def nice_ticks(low: float, high: float, count: int = 5) -> list:
    if high <= low:
        high = low + 1
    step = 10 ** math.floor(math.log10((high - low) / count))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    ticks = [round(math.floor(low / step) * step, 10)]
    while ticks[-1] < high - step * 1e-9:  # the last tick at or above `high`
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"


def draw_panel(canvas: Canvas, panel: Panel, top: int, width: int, height: int) -> None:
    left, right, bottom = 90, width - 20, top + height - 56
    plot_top = top + 30 + 18 * ((len(panel.series) + 2) // 3)
    canvas.text(left, top + 8, panel.title)
    legend_x, legend_y = left, top + 30
    for index, series in enumerate(panel.series):
        x = legend_x + (index % 3) * ((right - left) // 3)
        y = legend_y + 18 * (index // 3)
        canvas.rect(x, y + 4, x + 20, y + 9, series.colour)
        canvas.text(x + 26, y, series.name)
    points = [p for s in panel.series for p in s.points]
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1)
    x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def to_px(x, y):
        px = left + (x - x_low) / ((x_high - x_low) or 1) * (right - left)
        py = bottom - (y - y_low) / ((y_high - y_low) or 1) * (bottom - plot_top)
        return int(round(px)), int(round(py))

    for tick in y_ticks:
        _, py = to_px(x_low, tick)
        canvas.line(left, py, right, py, LIGHT)
        text = label(tick)
        canvas.text(left - 8 - text_width(text), py - 7, text, GREY)
    for tick in x_ticks:
        px, _ = to_px(tick, y_low)
        canvas.line(px, plot_top, px, bottom, LIGHT)
        text = label(tick)
        canvas.text(px - text_width(text) // 2, bottom + 8, text, GREY)
    canvas.line(left, plot_top, left, bottom, BLACK)
    canvas.line(left, bottom, right, bottom, BLACK)
    canvas.text(right - text_width(panel.x_label), bottom + 28, panel.x_label, GREY)
    for series in panel.series:
        pixels = [to_px(x, y) for x, y in series.points]
        for (x0, y0), (x1, y1) in zip(pixels, pixels[1:], strict=False):
            canvas.line(x0, y0, x1, y1, series.colour, thick=2)
        if len(pixels) == 1:
            canvas.rect(pixels[0][0] - 2, pixels[0][1] - 2, pixels[0][0] + 3, pixels[0][1] + 3, series.colour)


def write_chart(path: str, panels: list, width: int = 1000, panel_height: int = 380) -> None:
    canvas = Canvas(width, panel_height * len(panels))
    for index, panel in enumerate(panels):
        draw_panel(canvas, panel, index * panel_height, width, panel_height)
    with open(path, "wb") as handle:
        handle.write(canvas.png())

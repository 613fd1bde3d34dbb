"""The synthetic pool's visual world (`thresher synth`): what a scene is and how it is told.

A scene is a few objects of one kind and colour (KINDS, COLORS) at a size and position, on a textured
background (BACKGROUNDS, TEXTURES); random_scene draws one. Captions describe it: english_caption (the
clean captions), foreign_caption (the non_english category, in four languages), short_caption. The
evaluation sets' class names and zero-shot templates (CLASS_TEMPLATES, COLOR_TEMPLATES) are here too.
thresher/synthetic/drawing.py draws a scene; plan.py decides which scene each sample shows.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------------
# The visual world

KINDS = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "crescent", "arrow"]
PLURAL = {"cross": "crosses"}
COLORS = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 70, 215),
    "yellow": (245, 215, 35),
    "purple": (130, 50, 170),
    "orange": (245, 135, 25),
    "pink": (240, 120, 180),
    "brown": (120, 75, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "beige": (225, 210, 180),
    "light blue": (170, 205, 235),
    "teal": (30, 125, 125),
    "navy": (25, 35, 90),
    "cream": (250, 245, 220),
    "olive": (110, 115, 50),
    "lavender": (200, 185, 230),
    "charcoal": (55, 58, 62),
    "sand": (205, 180, 130),
}
TEXTURES = ["plain", "striped", "dotted", "checkered", "grainy", "faded"]
POSITIONS = {
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "top left": (0.27, 0.27),
    "bottom right": (0.73, 0.73),
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

EN_TEMPLATES = [
    "a photo of {n} {size} {color} {kinds} on a {texture} {bg} background",
    "{N} {color} {kinds} arranged on a {texture} {bg} surface",
    "an illustration of {n} {color} {kinds} against a {texture} {bg} backdrop",
    "simple graphic showing {n} {size} {color} {kinds} over a {bg} background",
    "{N} {color} {kinds} drawn on {texture} {bg} paper",
    "there {be} {n} {color} {kinds} in this picture with a {bg} background",
    "close-up of {n} {size} {color} {kinds} printed on a {texture} {bg} wall",
    "digital art with {n} {color} {kinds} placed on a {bg} {texture} pattern",
]
EN_POSITION_TEMPLATE = "a picture of {n} {size} {color} {kinds} near the {pos} of a {texture} {bg} background"

# Non-English captions: the same scenes, in a few languages. Grammar is approximate (agreement is
# ignored), which does not matter to a language identifier and keeps the world simple.
FOREIGN = {
    "fr": {
        "templates": [
            "une photo de {n} {kinds} {color} sur un fond {bg} avec des motifs",
            "illustration avec {n} {kinds} de couleur {color} posés sur une surface {bg}",
            "il y a {n} {kinds} {color} dans cette image, avec un arrière-plan {bg}",
        ],
        "kinds": [
            "cercles",
            "carrés",
            "triangles",
            "étoiles",
            "croix",
            "anneaux",
            "losanges",
            "hexagones",
            "croissants",
            "flèches",
        ],
        "colors": ["rouges", "verts", "bleus", "jaunes", "violets", "orange", "roses", "marron", "blancs", "noirs"],
        "bg": [
            "gris",
            "beige",
            "bleu clair",
            "turquoise",
            "marine",
            "crème",
            "olive",
            "lavande",
            "anthracite",
            "sable",
        ],
        "n": ["un", "deux", "trois", "quatre"],
    },
    "de": {
        "templates": [
            "ein Foto von {n} {color}en {kinds} auf einem {bg} Hintergrund mit Muster",
            "eine Zeichnung mit {n} {color}en {kinds} vor einer {bg} Wand",
            "auf diesem Bild sind {n} {color}e {kinds} und der Hintergrund ist {bg}",
        ],
        "kinds": [
            "Kreisen",
            "Quadraten",
            "Dreiecken",
            "Sternen",
            "Kreuzen",
            "Ringen",
            "Rauten",
            "Sechsecken",
            "Halbmonden",
            "Pfeilen",
        ],
        "colors": ["rot", "grün", "blau", "gelb", "lila", "orange", "rosa", "braun", "weiß", "schwarz"],
        "bg": [
            "grauen",
            "beigen",
            "hellblauen",
            "türkisen",
            "dunkelblauen",
            "cremefarbenen",
            "olivgrünen",
            "lavendelfarbenen",
            "anthrazitfarbenen",
            "sandfarbenen",
        ],
        "n": ["einem", "zwei", "drei", "vier"],
    },
    "es": {
        "templates": [
            "una foto de {n} {kinds} {color} sobre un fondo {bg} con textura",
            "ilustración sencilla que muestra {n} {kinds} de color {color} en una pared {bg}",
            "en esta imagen hay {n} {kinds} {color} y el fondo es de color {bg}",
        ],
        "kinds": [
            "círculos",
            "cuadrados",
            "triángulos",
            "estrellas",
            "cruces",
            "anillos",
            "rombos",
            "hexágonos",
            "medias lunas",
            "flechas",
        ],
        "colors": [
            "rojos",
            "verdes",
            "azules",
            "amarillos",
            "morados",
            "naranjas",
            "rosados",
            "marrones",
            "blancos",
            "negros",
        ],
        "bg": ["gris", "beige", "celeste", "turquesa", "azul marino", "crema", "oliva", "lavanda", "carbón", "arena"],
        "n": ["un", "dos", "tres", "cuatro"],
    },
    "it": {
        "templates": [
            "una foto di {n} {kinds} {color} su uno sfondo {bg} con una trama",
            "illustrazione semplice con {n} {kinds} di colore {color} sopra una parete {bg}",
            "in questa immagine ci sono {n} {kinds} {color} e lo sfondo è {bg}",
        ],
        "kinds": [
            "cerchi",
            "quadrati",
            "triangoli",
            "stelle",
            "croci",
            "anelli",
            "rombi",
            "esagoni",
            "mezzelune",
            "frecce",
        ],
        "colors": ["rossi", "verdi", "blu", "gialli", "viola", "arancioni", "rosa", "marroni", "bianchi", "neri"],
        "bg": [
            "grigio",
            "beige",
            "azzurro",
            "verde acqua",
            "blu scuro",
            "crema",
            "oliva",
            "lavanda",
            "antracite",
            "sabbia",
        ],
        "n": ["un", "due", "tre", "quattro"],
    },
}
SHORT_CAPTIONS = ["{color} {kind}", "{kind}", "IMG_{num}", "{kind}s", "photo", "DSC{num}", "{color}"]

CLASS_TEMPLATES = [
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "a {c} shape.",
    "an illustration of a {c}.",
    "a picture of a {c} on a background.",
    "a simple graphic of a {c}.",
]
COLOR_TEMPLATES = [
    "a photo of a {c} shape.",
    "something {c}.",
    "a {c} object on a background.",
    "an illustration in {c}.",
    "a drawing of {c} shapes.",
]


# ---------------------------------------------------------------------------------------------------
# Scenes and captions


def random_scene(rng: np.random.Generator, kind: str | None = None, color: str | None = None) -> dict:
    count = int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
    return {
        "kind": kind or KINDS[int(rng.integers(len(KINDS)))],
        "color": color or list(COLORS)[int(rng.integers(len(COLORS)))],
        "count": count,
        "size": "small" if rng.random() < 0.4 else "large",
        "pos": list(POSITIONS)[int(rng.integers(len(POSITIONS)))],
        "bg": list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
        "texture": TEXTURES[int(rng.integers(len(TEXTURES)))],
    }


def english_caption(scene: dict, rng: np.random.Generator) -> str:
    c = scene["count"]
    kinds = scene["kind"] if c == 1 else PLURAL.get(scene["kind"], scene["kind"] + "s")
    n = "a" if c == 1 else NUMBER_WORDS[c]
    if c == 1 and rng.random() < 0.3:
        template = EN_POSITION_TEMPLATE
    else:
        template = EN_TEMPLATES[int(rng.integers(len(EN_TEMPLATES)))]
    texture = scene["texture"] if scene["texture"] != "plain" else "plain"
    text = template.format(
        n=n,
        N=n.capitalize(),
        be="is" if c == 1 else "are",
        size=scene["size"],
        color=scene["color"],
        kinds=kinds,
        texture=texture,
        bg=scene["bg"],
        pos=scene["pos"],
    )
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def foreign_caption(scene: dict, rng: np.random.Generator) -> tuple[str, str]:
    lang = sorted(FOREIGN)[int(rng.integers(len(FOREIGN)))]
    d = FOREIGN[lang]
    template = d["templates"][int(rng.integers(len(d["templates"])))]
    text = template.format(
        n=d["n"][scene["count"] - 1],
        kinds=d["kinds"][KINDS.index(scene["kind"])],
        color=d["colors"][list(COLORS).index(scene["color"])],
        bg=d["bg"][list(BACKGROUNDS).index(scene["bg"])],
    )
    return text, lang


def short_caption(scene: dict, rng: np.random.Generator) -> str:
    template = SHORT_CAPTIONS[int(rng.integers(len(SHORT_CAPTIONS)))]
    return template.format(color=scene["color"], kind=scene["kind"], num=int(rng.integers(1000, 9999)))

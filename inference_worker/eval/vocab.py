"""Word lists and seeded value generators (needle keys and values, names, coded words).

Everything takes a `random.Random` so that a sample is a pure function of its seed.
"""

from __future__ import annotations

import random
import string


def _words(text: str) -> list[str]:
    return text.split()


NOUNS = _words(
    """
anchor apple arrow autumn badge basket beach bell bicycle blanket bottle branch bread bridge
bucket butter button cabin cable camera candle canvas carpet castle cellar chair chalk cherry
chimney circle cliff clock cloud coast coffee collar copper corner cotton cradle crystal
curtain desert diamond doctor dragon drawer engine falcon feather fence field forest fountain
garden garlic glacier glove granite guitar hammer harbor helmet honey horizon island jacket
jungle kettle kitchen ladder lantern lemon letter library lizard magnet maple marble meadow
mirror monkey morning mountain needle ocean orange orchard oyster paddle palace pencil pepper
pillow planet pocket pottery puzzle rabbit radio river rocket saddle sailor salmon satellite
scarf shadow shelter silver sketch spider spoon statue street summer sunset table teacher
temple thunder ticket tiger timber tomato tower tractor trumpet tunnel turtle umbrella valley
velvet village violin wagon walnut window winter wizard wolf yard zebra
"""
)

ADJECTIVES = _words(
    """
ancient bitter bold brave bright broken calm careful cheerful clever cold crooked curious
dark deep distant dusty eager early elegant empty fancy fierce fragile gentle giant golden
graceful hidden hollow honest humble icy jolly lazy lively lonely loud lucky mighty modern
narrow noble plain polite proud quiet rapid rough royal rusty sharp shiny silent simple
sleepy smooth soft solid steady strange sturdy sudden swift tall tender tiny wild wise young
"""
)

VERBS_PAST = _words(
    """
admired borrowed built carried cleaned collected crossed delivered described discovered drew
explored fixed followed found gathered guarded hid inspected kept lifted measured mended
noticed opened painted planted polished visited washed watched wrapped
"""
)

FIRST_NAMES = _words(
    """
Adele Bruno Celia Darius Elena Felix Greta Hugo Ingrid Jasper Kira Leon Mara Nico Olga
Pavel Quinn Rosa Silas Tessa Ulric Vera Walter Xenia Yusuf Zora Anton Beatrix Cyrus Delia
Emil Fiona Gideon Hana Ivo Juno Kasimir Lydia Milo Nadia
"""
)

PROFESSIONS = _words(
    """
architect baker carpenter chemist dentist electrician farmer fisherman florist geologist
jeweler journalist librarian locksmith mechanic musician nurse pharmacist photographer pilot
plumber potter sculptor surgeon tailor translator veterinarian weaver
"""
)

COLORS = _words(
    """
amber azure beige crimson emerald indigo ivory lavender magenta maroon olive scarlet teal
turquoise violet saffron
"""
)

SYLLABLES = _words(
    """
ba be bo da de do fa fe fi ga go ka ke ki la le li lo ma me mi mo na ne no pa pe po ra re
ri ro sa se si so ta te ti to va ve vi vo za zo dar fen gal hal kor lin mar nor ran ser
tal ven
"""
)

REAL_WORDS: list[str] = sorted(set(NOUNS) | set(ADJECTIVES))


def random_number(rng: random.Random, digits: int = 7) -> str:
    """A number with exactly `digits` digits (no leading zero)."""
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def random_uuid(rng: random.Random) -> str:
    """A UUID-like string 8-4-4-4-12 of lowercase hex digits."""
    hexdigits = "0123456789abcdef"
    groups = [8, 4, 4, 4, 12]
    return "-".join("".join(rng.choice(hexdigits) for _ in range(n)) for n in groups)


def random_word(rng: random.Random) -> str:
    return rng.choice(REAL_WORDS)


def random_key_word(rng: random.Random) -> str:
    """A two-word key such as `quiet-harbor` (RULER's word keys)."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def pseudo_word(rng: random.Random, syllables: int = 3) -> str:
    """A pronounceable made-up word, e.g. `korelima`."""
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables))


def coded_word(rng: random.Random) -> str:
    """A short random letter string (RULER's coded words), 3 to 6 letters."""
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def random_person(rng: random.Random) -> str:
    """A fictional person: a first name and a made-up surname, e.g. `Greta Valmori`."""
    return f"{rng.choice(FIRST_NAMES)} {pseudo_word(rng, 3).capitalize()}"


def variable_name(rng: random.Random) -> str:
    """Five upper-case letters (RULER's variable names)."""
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


_GENERATORS = {
    "number": random_number,
    "uuid": random_uuid,
    "word": random_word,
    "keyword": random_key_word,
    "person": random_person,
    "variable": variable_name,
    "coded": coded_word,
}


def unique_values(
    rng: random.Random, kind: str, n: int, exclude: set[str] | None = None
) -> list[str]:
    """`n` distinct values of a kind (`number`, `uuid`, `word`, `keyword`, `person`, ...)."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown value kind {kind!r}; expected one of {sorted(_GENERATORS)}")
    make = _GENERATORS[kind]
    seen = set(exclude or ())
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        value = make(rng)
        attempts += 1
        if value not in seen:
            seen.add(value)
            out.append(value)
        elif attempts > 100 * (n + 10):
            raise ValueError(f"cannot draw {n} distinct values of kind {kind!r}")
    return out


def word_pool(rng: random.Random, n: int) -> list[str]:
    """`n` distinct words: real words first (shuffled), then made-up words when more are needed."""
    words = list(REAL_WORDS)
    rng.shuffle(words)
    seen = set(words)
    while len(words) < n:
        word = pseudo_word(rng, rng.randint(2, 3))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words[:n]

"""The sub-sets of ZPPO-77K: canonical names, where the two sources meet, and each one's tier.

The paper (App. B.1; `shared/ZPPO_SPEC.md` §7) lists the sub-sets of each tier by name, per source.
A Vero config is `<family>-<dataset>` (`stem-ai2d_merged`, `chart_ocr-CoSyn_400k_chart`); its
family is not its tier (`stem-raven` is tier 2): only `<dataset>` is looked up. An MMFineReason
`source` is looked up the same way after its `FineVision-` prefix (`FineVision-ai2d_merged`).
A sub-set whose name matches no entry is not in ZPPO-77K.

Decision: the paper does not publish its canonical-name map. Names are normalised (lower case,
letters and digits only, `finevision` prefix removed); `SUBSETS` lists, for each canonical
sub-set, its tier and the normalised spellings that name it in either source. One canonical
sub-set named in both sources (AI2D, Geo170K, WeMath, TQA, VisualWebInstruct, Raven) is taken from
Vero only.
"""
from __future__ import annotations

import re

# canonical name -> (tier, normalised spellings). Spellings after the paper's lists, Vero's config
# names and MMFineReason's `source` values.
SUBSETS: dict[str, tuple[int, tuple[str, ...]]] = {
    # Tier 1 (2,800 each). Vero.
    "ai2d": (1, ("ai2d", "ai2dmerged")),
    "geo170k": (1, ("geo170k",)),
    "geomverse": (1, ("geomverse",)),
    "geoqa_plus": (1, ("geoqaplus", "geoqa")),
    "mmk12": (1, ("mmk12",)),
    "cosyn_math": (1, ("cosynmath", "cosyn400kmath")),
    "cosyn_chart": (1, ("cosynchart", "cosyn400kchart")),
    "cosyn_diagram": (1, ("cosyndiagram", "cosyn400kdiagram")),
    "cosyn_table": (1, ("cosyntable", "cosyn400ktable")),
    "wemath": (1, ("wemath", "wemath20pro", "wemath20standard", "wemath2pro", "wemath2standard",
                   "wemath2", "wemath20")),
    "tqa": (1, ("tqa",)),
    "visualwebinstruct": (1, ("visualwebinstruct",)),
    "chartqa": (1, ("chartqa",)),
    "arxivqa": (1, ("arxivqa",)),
    # Tier 1. MMFineReason (AI2D, Geo170K, WeMath, TQA, VisualWebInstruct: above).
    "mmr1": (1, ("mmr1",)),
    "euclid": (1, ("euclid", "euclid30k")),
    "geometry3k": (1, ("geo3k", "geometry3k")),
    "mm_openr1": (1, ("mmopenr1",)),
    "bmmr": (1, ("bmmr",)),
    "scienceqa": (1, ("scienceqa",)),
    "virl39k": (1, ("virl39k",)),
    # Tier 2 (1,400 each). Vero.
    "pathvqa": (2, ("pathvqa",)),
    "vqarad": (2, ("vqarad",)),
    "raven": (2, ("raven",)),
    "evochart": (2, ("evochart",)),
    "infographic_vqa": (2, ("infographicvqa", "infovqa")),
    "aokvqa": (2, ("aokvqa",)),
    "gqa": (2, ("gqa",)),
    "iconqa": (2, ("iconqa",)),
    "vqav2": (2, ("vqav2",)),
    "visual7w": (2, ("visual7w",)),
    "tallyqa": (2, ("tallyqa",)),
    "pixelreasoner": (2, ("pixelreasoner",)),
    "multihop": (2, ("multihop",)),
    "pixmo": (2, ("pixmo", "pixmopoints", "pixmocount")),
    "visual_probe": (2, ("visualprobe",)),
    # Tier 2. MMFineReason (Raven: above).
    "visualsphinx": (2, ("visualsphinx",)),
    "puzzleqa": (2, ("puzzleqa",)),
    "llava_cot": (2, ("llavacot",)),
    "zebra_cot": (2, ("zebracot",)),
}
_BY_SPELLING = {s: name for name, (_, spellings) in SUBSETS.items() for s in spellings}
assert len(_BY_SPELLING) == sum(len(s) for _, s in SUBSETS.values()), "a spelling is listed twice"


def normalise(name: str) -> str:
  """Lower case, letters and digits only, without MMFineReason's `FineVision` prefix."""
  key = re.sub(r"[^0-9a-z]", "", name.lower())
  return key[len("finevision"):] if key.startswith("finevision") else key


def vero_dataset(config: str) -> str:
  """The `<dataset>` part of a Vero config `<family>-<dataset>` (the family is dropped)."""
  return config.split("-", 1)[1] if "-" in config else config


def canonical(name: str) -> str | None:
  """The canonical sub-set of a source's sub-set name, or None if ZPPO-77K does not use it."""
  return _BY_SPELLING.get(normalise(name))


def tier(canonical_name: str) -> int:
  return SUBSETS[canonical_name][0]

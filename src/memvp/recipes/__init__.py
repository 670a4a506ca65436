"""Recipes on top of the library: the embedded demo (synthetic scenes, ``memvp demo``), the
two-photo smoke run (``memvp two-photos``) and the demo's localization study. The library core
never imports this package; only the CLI does."""

DEMO_VISION_ENCODER = "efficientnet-lite0:block6,head"
"""The demo's vision encoder: EfficientNet-Lite0's block-6 and head features on its 7x7 grid (the
head keeps little colour information; block 6 adds it). What ``memvp demo`` trains with and
``memvp explain`` assumes by default."""

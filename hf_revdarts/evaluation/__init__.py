"""Scoring translations: loading a model folder, beam-search translation, sacreBLEU/chrF with signatures and
the paired bootstrap."""

"""Data shipped with the package: ImageNet classes, templates and WordNet ids, the demo corpus, the
vocabularies (profiles name them as ``package:<path>``)."""

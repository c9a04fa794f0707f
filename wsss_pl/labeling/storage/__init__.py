"""Where pseudo-labels go: the fingerprinted cache (``cache``: label PNGs + instance JSON,
manifest, atomic writes), its background writer (``writer``) and the COCO-JSON export
(``export``: ``export-labels``)."""

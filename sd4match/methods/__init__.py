"""One file per method family, each a matcher registered in ``benchmarks.registry``: DIFT,
SD4Match (Single / Class / CPM), and the padded-frame baselines (DINOv2, SD+DINO, GeoAware-SC,
DINOv3) on the shared frame base."""

"""The one table schema every part of the toolkit reads and writes.

Each row is one image pair of one split of one dataset. Column names and types are a public
contract: other tools read the Parquet files this package writes.

Coordinates
-----------
All keypoints and boxes are ``(x, y)`` pixel coordinates in the dataset's own convention,
unchanged: x grows to the right, y grows downwards, in the frame of the original image file.
Nothing is shifted by 0.5 or by 1. In particular the PF-Pascal and PF-Willow ``.mat`` values are
kept exactly as the files give them (whether they are 1-based MATLAB coordinates is unconfirmed;
every reference implementation uses them as they are, and so does this toolkit). SPair-71k
coordinates are the integer pixels of its JSON files, stored as float32.

Columns
-------
pair_id            string   unique within (dataset, split)
dataset            string   "spair-71k" | "pf-pascal" | "pf-willow" | "spair-u" | "ap-10k" | "cub-200-2011"
split              string   "trn" | "val" | "test"; AP-10K also "test-cross-species", "test-cross-family" (and
                            "val-..."), CUB-200-2011 "test-distilldift" (the pair protocol is in the name)
category           string   object class (PF-Willow: car, duck, motorbike, winebottle; AP-10K: species,
                            family for cross-species, "all" for cross-family; CUB: the class folder)
subset             string   PF-Willow subset such as "car(G)"; null elsewhere
src_image          string   path of the source image relative to the dataset root
trg_image          string   path of the target image relative to the dataset root
src_width ...      int32    src_width, src_height, trg_width, trg_height of the image files
src_kps, trg_kps   list<fixed_size_list<float32, 2>>  (x, y) keypoints, same length, only the
                            keypoints annotated in both images, in ``kps_ids`` order
kps_ids            list<int32>  the dataset's keypoint index of each row of src_kps / trg_kps
src_bbox, trg_bbox fixed_size_list<float32, 4>  (x1, y1, x2, y2); null where the dataset has none
flip               bool     PF-Pascal: the pair list's flip flag (test list: false); null elsewhere
viewpoint_variation, scale_variation, truncation, occlusion   int8, SPair-71k only (else null)
src_pose, trg_pose string   SPair-71k only
mirror             bool     SPair-71k only
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2

DATASETS = ("spair-71k", "pf-pascal", "pf-willow", "spair-u", "ap-10k", "cub-200-2011")
SPLITS = ("trn", "val", "test")

KP_TYPE = pa.list_(pa.list_(pa.float32(), 2))
BBOX_TYPE = pa.list_(pa.float32(), 4)

SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("subset", pa.string()),
        pa.field("src_image", pa.string(), nullable=False),
        pa.field("trg_image", pa.string(), nullable=False),
        pa.field("src_width", pa.int32(), nullable=False),
        pa.field("src_height", pa.int32(), nullable=False),
        pa.field("trg_width", pa.int32(), nullable=False),
        pa.field("trg_height", pa.int32(), nullable=False),
        pa.field("src_kps", KP_TYPE, nullable=False),
        pa.field("trg_kps", KP_TYPE, nullable=False),
        pa.field("kps_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("src_bbox", BBOX_TYPE),
        pa.field("trg_bbox", BBOX_TYPE),
        pa.field("flip", pa.bool_()),
        pa.field("viewpoint_variation", pa.int8()),
        pa.field("scale_variation", pa.int8()),
        pa.field("truncation", pa.int8()),
        pa.field("occlusion", pa.int8()),
        pa.field("src_pose", pa.string()),
        pa.field("trg_pose", pa.string()),
        pa.field("mirror", pa.bool_()),
        # ids visible in each image, beyond the pair's matched keypoints (null: not known for this pair;
        # SPair-71k reads them from ImageAnnotation/ where present, AP-10K from its per-image visibility)
        pa.field("src_visible_ids", pa.list_(pa.int32())),
        pa.field("trg_visible_ids", pa.list_(pa.int32())),
    ],
    metadata={"corrbench.schema_version": str(SCHEMA_VERSION)},
)

COLUMNS = tuple(SCHEMA.names)


def empty_columns() -> dict[str, list]:
    """A dict of empty lists, one per column, for row-wise builders."""
    return {name: [] for name in COLUMNS}


def to_table(columns: dict[str, list]) -> pa.Table:
    """Build a table in :data:`SCHEMA` from column lists (missing optional columns become null)."""
    n = len(columns["pair_id"])
    arrays = []
    for field in SCHEMA:
        values = columns.get(field.name)
        if values is None or len(values) == 0 and n:
            arrays.append(pa.nulls(n, type=field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def check_table(table: pa.Table) -> None:
    """Raise ``ValueError`` unless ``table`` has exactly the schema's columns and types."""
    if table.schema.names != list(COLUMNS):
        missing = [c for c in COLUMNS if c not in table.schema.names]
        extra = [c for c in table.schema.names if c not in COLUMNS]
        raise ValueError(f"table does not follow the pair schema: missing {missing}, extra {extra}")
    for field in SCHEMA:
        got = table.schema.field(field.name).type
        if got != field.type:
            raise ValueError(f"column {field.name!r} has type {got}, expected {field.type}")

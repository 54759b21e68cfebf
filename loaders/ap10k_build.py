"""Build the AP-10K correspondence benchmark (GeoAware-SC's format, read by :mod:`loaders.ap10k`)
from the AP-10K release, following the construction rules in ``../shared/docs/datasets-and-protocols.md``:

1. The split-1 train, test and val annotation files are merged (in that order); each image keeps
   its first annotation only.
2. ``ImageAnnotation/<family>/<species>/<12-digit id>.json`` = the annotation's fields, then the
   image's (the image ``id`` overwrites the annotation's), then ``name`` (species) and
   ``supercategory`` (family), indented by 4; the image is copied to ``JPEGImages/<family>/<species>/``.
3. Per species: images whose id is in the crowd list (GeoAware-SC's ``ap-10k_is_crowd.txt``) are
   dropped, the rest kept when ``num_keypoints >= 3``; the last 30 go to test, the 20 before them
   to val, the rest to train (``{train,val,test}_filtered.txt`` in the species folder).
4. Intra-species pairs (seed 42): every unordered pair whose mutual visibility
   ``sum((v_src / 2) * (v_trg / 2)) >= 3``; train keeps a random ``min(50 x images, valid)``, val and
   test keep all -> ``PairAnnotation/{trn,val,test}/<src>-<trg>:<species>.json``.
5. Cross-species (seed 42 again): in families with more than one species, all products of two
   species' lists, filtered as above, at most 900 (test) / 400 (val) drawn per family ->
   ``PairAnnotation/{test,val}_cross_species/<src>-<trg>:<family>.json``.
6. Cross-family (seed 42 again): for each pair of families all products of their lists, filtered,
   at most 30 (test) / 20 (val) drawn -> ``PairAnnotation/{test,val}_cross_family/<src>-<trg>:all.json``.

Deliberate difference: GeoAware-SC orders each species' images by directory listing, which no one
can reproduce; here they are ordered by image id, and species, families and their pairs by name.
The lists written here are therefore this toolkit's AP-10K lists, not GeoAware-SC's: the build
writes ``build.json`` (inputs' sha256, rules, seed) beside them so that a result names its lists.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
from pathlib import Path

from ._common import read_json_object, read_text, regular_file
from .errors import DatasetError

SEED = 42
MIN_KEYPOINTS = 3
MIN_VISIBILITY = 3.0
N_TEST, N_VAL = 30, 20
TRAIN_PAIRS_PER_IMAGE = 50
CROSS_SPECIES_MAX = {"test": 900, "val": 400}
CROSS_FAMILY_MAX = {"test": 30, "val": 20}
SPLIT_FILES = ("ap10k-train-split1.json", "ap10k-test-split1.json", "ap10k-val-split1.json")


def _json(path: Path) -> dict:
    data = read_json_object(path, "AP-10K annotation file")
    if not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{path}: expected a COCO object with 'images', 'annotations' and 'categories' lists")
    return data


def _visibility(a: list, b: list) -> float:
    return sum((a[3 * i + 2] / 2) * (b[3 * i + 2] / 2) for i in range(len(a) // 3))


def _inside(base: Path, *parts: str) -> Path:
    """``base / parts``, refused if it would leave ``base`` (names are checked before; this is the
    last guard of every write)."""
    path = base.joinpath(*parts)
    if os.path.commonpath([os.path.abspath(path), os.path.abspath(base)]) != os.path.abspath(base):
        raise DatasetError(f"{'/'.join(parts)}: would be written outside {base}")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Building folders of earlier builds into ``out`` whose process is gone (a killed build)."""
    for d in out.parent.glob(f".{out.name}.building-*"):
        try:
            pid = int(d.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _num_keypoints(a: dict, where: str) -> int:
    n = a.get("num_keypoints", 0)
    if n is None:
        return 0
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 17:
        raise DatasetError(f"{where}: field 'num_keypoints' must be an integer in 0..17, got {n!r}"[:300])
    return n


def build(annotation_files: list[Path], images_dir: Path, crowd_file: Path, out: Path) -> dict[str, int]:
    """Write the benchmark into ``out`` (which must not exist yet); returns pairs per split folder.

    Every name from the files (family, species) must be one safe path component, and every image
    annotation must pass the reader's rules (:func:`loaders.ap10k.validate_image`), or nothing is
    written (one-line :class:`DatasetError` naming the file and field). The build goes into its own
    temporary folder beside ``out`` (concurrent builds never share one), the reader then reads every
    split of it, and only then is it published in one rename; a second build that finishes later
    finds ``out`` taken and publishes nothing."""
    from .ap10k import SPLITS, check_name, pair_folder, validate_image
    from .ap10k import load as read_split

    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out}: already exists; the build writes a new folder")
    _remove_stale(out)
    crowd = {int(t) for t in read_text(crowd_file, "AP-10K crowd list").split() if t.strip().isdigit()}
    cats, images, anns = {}, {}, {}
    for path in annotation_files:
        data = _json(Path(path))
        for c in data["categories"]:
            if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
                    and isinstance(c.get("supercategory"), str)):
                raise DatasetError(f"{path}: a category lacks an integer id, a name or a supercategory: {c!r}"[:300])
            check_name(c["name"], f"{path}: category {c['id']}", "name")
            check_name(c["supercategory"], f"{path}: category {c['id']}", "supercategory")
            cats[c["id"]] = c
        for im in data["images"]:
            if not (isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)):
                raise DatasetError(f"{path}: an image lacks an integer id or a file_name: {im!r}"[:300])
            name = os.path.basename(im["file_name"].replace("\\", "/"))
            if not name or name in (".", "..") or any(ord(ch) < 32 or ch == "\x7f" for ch in im["file_name"]):
                raise DatasetError(f"{path}: image {im['id']}: field 'file_name' must name an image file, "
                                   f"got {im['file_name'][:80]!r}")
            images.setdefault(im["id"], im)
        for a in data["annotations"]:
            if not (isinstance(a, dict) and isinstance(a.get("image_id"), int) and isinstance(a.get("keypoints"), list)
                    and len(a["keypoints"]) == 51 and a.get("category_id") in cats):
                raise DatasetError(f"{path}: an annotation lacks image_id, 17 x 3 keypoints or a known category: "
                                   f"{str(a)[:200]}")
            if a["image_id"] not in anns:  # the first annotation of each image
                _num_keypoints(a, f"{path}: annotation of image {a['image_id']}")
                anns[a["image_id"]] = (a, path)
    # validated before anything is written: the reader's rules on every image that is kept
    for image_id in sorted(anns):
        (a, path), im = anns[image_id], images.get(image_id)
        if im is None:
            raise DatasetError(f"{path}: annotation of image {image_id} has no image entry")
        cat = cats[a["category_id"]]
        validate_image({**a, **im, "name": cat["name"], "supercategory": cat["supercategory"]},
                       f"{path}: image {image_id}")
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-{os.getpid()}-", dir=out.parent))
    lists: dict[tuple[str, str], dict[str, list[int]]] = {}
    records: dict[int, dict] = {}
    try:
        for image_id in sorted(anns):
            (a, _), im = anns[image_id], images[image_id]
            cat = cats[a["category_id"]]
            family, species = cat["supercategory"], cat["name"]
            rec = {**a, **im, "name": species, "supercategory": family}
            rel = f"{family}/{species}/{image_id:012d}"
            _inside(tmp, "ImageAnnotation", family, species).mkdir(parents=True, exist_ok=True)
            _inside(tmp, "ImageAnnotation", f"{rel}.json").write_text(json.dumps(rec, indent=4))
            src = images_dir / os.path.basename(im["file_name"])
            regular_file(src, "AP-10K image")
            _inside(tmp, "JPEGImages", family, species).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, _inside(tmp, "JPEGImages", f"{rel}.jpg"))
            records[image_id] = {"rel": rel, "kp": a["keypoints"]}
            if image_id in crowd or _num_keypoints(a, "") < MIN_KEYPOINTS:
                continue
            lists.setdefault((family, species), {"all": []})["all"].append(image_id)
        for (family, species), d in sorted(lists.items()):
            ids = d["all"]  # by image id (GeoAware-SC: directory-listing order)
            d["test"] = ids[-N_TEST:]
            d["val"] = ids[-(N_TEST + N_VAL):-N_TEST] if len(ids) > N_TEST else []
            d["trn"] = ids[: max(0, len(ids) - N_TEST - N_VAL)]
            for name, key in (("train", "trn"), ("val", "val"), ("test", "test")):
                (tmp / "ImageAnnotation" / family / species / f"{name}_filtered.txt").write_text(
                    "".join(f"{i:012d}\n" for i in d[key]))
        counts: dict[str, int] = {}

        def write(folder: str, pairs: list[tuple[int, int]], category: str) -> None:
            d = tmp / "PairAnnotation" / folder
            d.mkdir(parents=True, exist_ok=True)
            for s, t in pairs:
                body = {"src_json_path": f"data/ap-10k/ImageAnnotation/{records[s]['rel']}.json",
                        "trg_json_path": f"data/ap-10k/ImageAnnotation/{records[t]['rel']}.json"}
                (d / f"{s:012d}-{t:012d}:{category}.json").write_text(json.dumps(body, indent=4))
            counts[folder] = counts.get(folder, 0) + len(pairs)

        valid = lambda s, t: _visibility(records[s]["kp"], records[t]["kp"]) >= MIN_VISIBILITY  # noqa: E731
        rng = random.Random(SEED)
        species_keys = sorted(lists)
        rng.shuffle(species_keys)
        for family, species in species_keys:
            d = lists[(family, species)]
            for key in ("trn", "val", "test"):
                pairs = [p for p in itertools.combinations(d[key], 2) if valid(*p)]
                if key == "trn":
                    pairs = rng.sample(pairs, min(TRAIN_PAIRS_PER_IMAGE * len(d[key]), len(pairs)))
                write(key, pairs, species)
        families: dict[str, list[str]] = {}
        for family, species in sorted(lists):
            families.setdefault(family, []).append(species)
        rng = random.Random(SEED)
        for family, members in sorted(families.items()):
            if len(members) < 2:
                continue
            for key in ("test", "val"):
                pairs = [p for a, b in itertools.combinations(members, 2)
                         for p in itertools.product(lists[(family, a)][key], lists[(family, b)][key]) if valid(*p)]
                write(f"{key}_cross_species", rng.sample(pairs, min(CROSS_SPECIES_MAX[key], len(pairs))), family)
        rng = random.Random(SEED)
        for fa, fb in itertools.combinations(sorted(families), 2):
            for key in ("test", "val"):
                left = [i for s in families[fa] for i in lists[(fa, s)][key]]
                right = [i for s in families[fb] for i in lists[(fb, s)][key]]
                pairs = [p for p in itertools.product(left, right) if valid(*p)]
                write(f"{key}_cross_family", rng.sample(pairs, min(CROSS_FAMILY_MAX[key], len(pairs))), "all")
        inputs = {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in [*annotation_files, crowd_file]}
        (tmp / "build.json").write_text(json.dumps({
            "builder": "corrbench loaders.ap10k_build", "seed": SEED, "inputs_sha256": inputs, "pairs": counts,
            "order": "image id within a species; species, families and pairs by name (GeoAware-SC: directory listing)",
            "rules": {"min_keypoints": MIN_KEYPOINTS, "min_visibility": MIN_VISIBILITY, "test": N_TEST, "val": N_VAL,
                      "train_pairs_per_image": TRAIN_PAIRS_PER_IMAGE, "cross_species_max": CROSS_SPECIES_MAX,
                      "cross_family_max": CROSS_FAMILY_MAX, "crowd_ids_dropped": len(crowd & set(anns))},
        }, indent=2, sort_keys=True) + "\n")
        # what is published is what the reader accepts, every split of it
        for split in SPLITS:
            if pair_folder(tmp, split).is_dir() and any(pair_folder(tmp, split).glob("*.json")):
                try:
                    read_split(tmp, split)
                except DatasetError as exc:
                    raise DatasetError(f"the built dataset fails its own reader, nothing published: "
                                       f"{str(exc).replace(str(tmp), str(out))}") from None
        try:
            os.rename(tmp, out)  # one rename; refused when another build published first
        except OSError:
            raise DatasetError(f"{out}: already exists (another build finished first); nothing published by this one") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts

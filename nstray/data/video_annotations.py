"""Video part annotations in the YouTube-VIS style: parse, validate, and label frames (data layer; no Ray).

The format (as YouTube-VIS / OVIS / most video instance segmentation datasets)::

    {"videos": [{"id": 1, "width": W, "height": H, "length": N, "file_names": ["v/00000.jpg", ...]}],
     "categories": [{"id": 1, "name": "wheel"}, ...],
     "annotations": [{"id": 7, "video_id": 1, "category_id": 1,
                      "segmentations": [RLE | polygons | null, ... one per frame],
                      "bboxes": [[x, y, w, h] | null, ... one per frame]}]}

An annotation is one *track* (one part instance through the video). In a video's label maps, track
``k`` (in annotation-id order) is label ``k`` on every frame, so a part keeps its label — and its
style — across the video. A frame with ``null`` for a track has that part absent; a frame with a
box but no segmentation uses the box as its mask (as for images).

COCO with frames as images (as video annotation tools such as CVAT export) is read into the same
:class:`VideoRecord` / :class:`VideoMasks` by :func:`parse_coco_frames`::

    {"images": [{"id": 11, "video_id": 1, "frame_id": 0, "file_name": "v/00000.jpg", "width": W, "height": H}, ...],
     "videos": [{"id": 1, ...}],             # optional; when present, image video_ids must be listed
     "categories": [{"id": 1, "name": "wheel"}, ...],
     "annotations": [{"id": 7, "image_id": 11, "category_id": 1, "segmentation": RLE | polygons | [],
                      "bbox": [x, y, w, h], "track_id": 3}, ...]}

``frame_id`` is the 0-based index of the frame in the video (MP4) or in the folder of frames (the
images' ``file_name`` in ``frame_id`` order). Annotations with the same ``track_id`` (or
``instance_id``, or ``attributes.track_id``) and category in one video form one track; without a
track id, the ``n``-th annotation of a category on a frame (in annotation-id order) joins the
``n``-th track of that category. :func:`load_video_annotations` tells the two formats apart.

Validation is per record, like :func:`nstray.data.coco.validate`: every bad video, image (frame) or
annotation is reported with a reason and a fix and left out; the rest is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nstray.data.masksource import MaskSourceError, PartLabels, check_labels

__all__ = ["VideoAnnotationError", "Track", "VideoRecord", "VideoProblem", "VideoAnnotations",
           "load_video_annotations", "parse_video_annotations", "parse_coco_frames", "is_coco_frames", "VideoMasks",
           "fit_labels"]


class VideoAnnotationError(ValueError):
    """The annotations file as a whole cannot be used; the message names it, the problem and the fix."""


@dataclass
class Track:
    """One annotated part instance through a video: per-frame segmentation and box (None = absent)."""

    ann_id: int
    category: str
    segmentations: list[Any]
    bboxes: list[Any]

    def part(self, frame: int) -> _FramePart | None:
        """This track on ``frame`` as a mask-code part, or None when absent there."""
        seg = self.segmentations[frame]
        box = self.bboxes[frame] if frame < len(self.bboxes) else None
        if seg is None and box is None:
            return None
        return _FramePart(self.ann_id, self.category, seg, box)


@dataclass
class _FramePart:
    """A track on one frame, shaped like :class:`nstray.masks.PartLike`."""

    ann_id: int
    category: str
    segmentation: Any
    bbox: Any


@dataclass
class VideoRecord:
    """One annotated video: its size, length, frame file names, and tracks (label ``k`` = ``tracks[k]``)."""

    video_id: int
    width: int
    height: int
    length: int
    file_names: list[str]
    tracks: list[Track] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return [t.category for t in self.tracks]

    def keyframes(self, every: int) -> VideoRecord:
        """A copy with masks only on frames ``0, every, 2·every, ...`` and the last (to test propagation)."""
        keep = set(range(0, self.length, every)) | {self.length - 1}
        tracks = [Track(t.ann_id, t.category, [s if i in keep else None for i, s in enumerate(t.segmentations)],
                        [b if i in keep else None for i, b in enumerate(t.bboxes)]) for t in self.tracks]
        return VideoRecord(self.video_id, self.width, self.height, self.length, self.file_names, tracks)

    def annotated_frames(self) -> list[int]:
        """Frames on which some track has a mask or box."""
        return [i for i in range(self.length)
                if any(t.segmentations[i] is not None or (i < len(t.bboxes) and t.bboxes[i] is not None)
                       for t in self.tracks)]


@dataclass(frozen=True)
class VideoProblem:
    """One bad record: which video / annotation, what is wrong, how to fix it."""

    video_id: Any
    ann_id: Any
    problem: str
    fix: str

    def __str__(self) -> str:
        ann = f" annotation {self.ann_id}" if self.ann_id is not None else ""
        return f"video {self.video_id}{ann}: {self.problem}; fix: {self.fix}"


@dataclass
class VideoAnnotations:
    """Good videos (by id) and every problem found."""

    videos: dict[int, VideoRecord]
    problems: list[VideoProblem]
    source: str = ""

    def only(self, video_id: int | None = None) -> VideoRecord:
        """The video ``video_id`` (or the only one); a clear error when absent or ambiguous."""
        if video_id is None:
            if len(self.videos) != 1:
                ids = ", ".join(str(v) for v in sorted(self.videos)) or "none"
                raise VideoAnnotationError(f"{self.source}: holds {len(self.videos)} usable videos ({ids}); "
                                           f"say which one (its id)")
            return next(iter(self.videos.values()))
        if video_id not in self.videos:
            ids = ", ".join(str(v) for v in sorted(self.videos)) or "none"
            raise VideoAnnotationError(f"{self.source}: no usable video with id {video_id} (usable: {ids})")
        return self.videos[video_id]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _categories(doc: dict) -> dict[Any, str]:
    """Category id → name."""
    return {c.get("id"): str(c.get("name")) for c in doc.get("categories") or [] if isinstance(c, dict)}


def _annotations(doc: dict) -> list[dict]:
    """The annotation entries in id order (so track order, hence labels, do not depend on the file's order)."""
    return sorted((a for a in doc.get("annotations") or [] if isinstance(a, dict)),
                  key=lambda a: a["id"] if _is_int(a.get("id")) else -1)


def _unknown_category(a: dict, cats: dict[Any, str], video_id: Any, where: str) -> VideoProblem | None:
    """The problem of an annotation whose category is not listed, or None."""
    if a.get("category_id") in cats:
        return None
    return VideoProblem(video_id, a.get("id"), f"{where}unknown category_id {a.get('category_id')!r}",
                        "use an id listed in 'categories'")


def _check_segmentation(seg: Any, h: int, w: int) -> str | None:
    """Why ``seg`` (one frame's) is unusable, or None."""
    if seg is None:
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and [size[0], size[1]] == [h, w]):
            return f"RLE size {size!r} is not the video's [height, width] = [{h}, {w}]"
        if not isinstance(seg.get("counts"), (str, list)):
            return "RLE 'counts' must be a string or a list of integers"
        return None
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return "a polygon needs an even number of coordinates, at least 6"
        return None
    return f"a segmentation must be an RLE dict, a list of polygons or null, got {type(seg).__name__}"


def _check_box(box: Any) -> str | None:
    if box is None:
        return None
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        return f"a box must be [x, y, w, h] or null, got {box!r}"
    if box[2] < 0 or box[3] < 0:
        return f"box {list(box)} has a negative width or height"
    return None


def parse_video_annotations(doc: Any, source: str = "<video annotations>") -> VideoAnnotations:
    """Validate a YouTube-VIS style document; bad videos and annotations are reported and left out."""
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), list):
        raise VideoAnnotationError(f"{source}: not YouTube-VIS style annotations (no 'videos' list); "
                                   f"give a JSON object with 'videos', 'annotations' and 'categories'")
    cats = _categories(doc)
    problems: list[VideoProblem] = []
    videos: dict[int, VideoRecord] = {}
    for v in doc["videos"]:
        vid = v.get("id") if isinstance(v, dict) else None
        if not isinstance(v, dict) or not _is_int(vid):
            problems.append(VideoProblem(vid, None, "the video entry has no integer 'id'", "give each video an id"))
            continue
        w, h, names = v.get("width"), v.get("height"), v.get("file_names")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            problems.append(VideoProblem(vid, None, f"width/height {w!r}x{h!r} are not positive integers",
                                         "set the video's frame size in pixels"))
            continue
        length = v.get("length", len(names) if isinstance(names, list) else None)
        if not _is_int(length) or length <= 0:
            problems.append(VideoProblem(vid, None, "neither 'length' nor 'file_names' gives the frame count",
                                         "add 'file_names' (one per frame) or 'length'"))
            continue
        if isinstance(names, list) and len(names) != length:
            problems.append(VideoProblem(vid, None, f"'length' is {length} but 'file_names' lists {len(names)} frames",
                                         "make them agree"))
            continue
        if vid in videos:
            problems.append(VideoProblem(vid, None, "a second video with the same id", "give every video its own id"))
            continue
        videos[vid] = VideoRecord(vid, w, h, length, list(names) if isinstance(names, list) else [])
    anns = _annotations(doc)
    for a in anns:
        aid, vid = a.get("id"), a.get("video_id")
        if vid not in videos:
            problems.append(VideoProblem(vid, aid, f"unknown video id {vid!r}",
                                         "point video_id at an entry of 'videos' (or fix that video's entry)"))
            continue
        video = videos[vid]
        if (bad := _unknown_category(a, cats, vid, "")) is not None:
            problems.append(bad)
            continue
        segs, boxes = a.get("segmentations"), a.get("bboxes")
        if segs is None and isinstance(boxes, list):
            segs = [None] * len(boxes)
        if not isinstance(segs, list) or len(segs) != video.length:
            n = len(segs) if isinstance(segs, list) else "no"
            problems.append(VideoProblem(vid, aid, f"{n} per-frame segmentations for a video of {video.length} frames "
                                         f"(frame index out of range)", "give one entry per frame, null where absent"))
            continue
        boxes = boxes if isinstance(boxes, list) else [None] * video.length
        if len(boxes) != video.length:
            problems.append(VideoProblem(vid, aid, f"{len(boxes)} per-frame boxes for a video of {video.length} frames",
                                         "give one box per frame, null where absent"))
            continue
        why = next(((i, r) for i, s in enumerate(segs) if (r := _check_segmentation(s, video.height, video.width))),
                   None) or next(((i, r) for i, b in enumerate(boxes) if (r := _check_box(b))), None)
        if why is not None:
            problems.append(VideoProblem(vid, aid, f"frame {why[0]}: {why[1]}",
                                         "re-export the masks at the video's size"))
            continue
        video.tracks.append(Track(int(aid) if _is_int(aid) else len(video.tracks), cats[a["category_id"]], segs, boxes))
    return VideoAnnotations(videos, problems, source)


def is_coco_frames(doc: Any) -> bool:
    """Whether ``doc`` is COCO with frames as images (its images carry ``video_id``)."""
    return (isinstance(doc, dict) and isinstance(doc.get("images"), list)
            and any(isinstance(im, dict) and "video_id" in im for im in doc["images"]))


def _track_key(a: dict) -> Any:
    for key in ("track_id", "instance_id"):
        if a.get(key) is not None:
            return a[key]
    attrs = a.get("attributes")
    return attrs.get("track_id") if isinstance(attrs, dict) else None


def parse_coco_frames(doc: Any, source: str = "<video annotations>", frames: int | None = None) -> VideoAnnotations:
    """Validate COCO whose images are video frames (``video_id``, ``frame_id``) into :class:`VideoRecord` s.

    ``frames``: the video's frame count when known (the MP4's), so a ``frame_id`` past it is reported;
    without it a video is as long as its last annotated frame. Bad videos, frames and annotations are
    reported and left out; the rest is used.
    """
    if not is_coco_frames(doc):
        raise VideoAnnotationError(f"{source}: not COCO with frames as images (no image carries 'video_id'); give "
                                   f"COCO whose images have 'video_id' and 'frame_id', or YouTube-VIS style JSON")
    cats = _categories(doc)
    listed = ({v.get("id") for v in doc["videos"] if isinstance(v, dict)}
              if isinstance(doc.get("videos"), list) else None)
    problems: list[VideoProblem] = []
    frame_of: dict[Any, tuple[int, int]] = {}  # image id -> (video id, frame index)
    by_video: dict[int, dict[int, dict]] = {}
    for im in doc["images"]:
        iid = im.get("id") if isinstance(im, dict) else None
        vid = im.get("video_id") if isinstance(im, dict) else None
        fid = im.get("frame_id") if isinstance(im, dict) else None

        def bad(problem: str, fix: str) -> None:
            problems.append(VideoProblem(vid, None, f"image {iid!r} (frame {fid!r}): {problem}", fix))

        if not isinstance(im, dict) or not _is_int(iid):
            bad("the image entry has no integer 'id'", "give each image (frame) an integer id")
        elif not _is_int(vid) or (listed is not None and vid not in listed):
            bad(f"unknown video id {vid!r}", "set the image's video_id to an id listed in 'videos'"
                if listed is not None else "give the image an integer video_id")
        elif not _is_int(fid) or fid < 0:
            bad("'frame_id' is not a frame index (an integer >= 0)", "give each image its 0-based frame index")
        elif frames is not None and frames > 0 and fid >= frames:
            bad(f"frame index {fid} is out of range: the video has {frames} frames",
                "annotate the right video, or drop the frames past its end")
        elif not (_is_int(im.get("width")) and _is_int(im.get("height")) and im["width"] > 0 and im["height"] > 0):
            bad(f"width/height {im.get('width')!r}x{im.get('height')!r} are not positive integers",
                "set the frame size in pixels")
        elif iid in frame_of:
            bad("a second image with the same id", "give every image its own id")
        elif fid in by_video.get(vid, {}):
            bad(f"a second image for frame {fid} of video {vid}", "give each frame of a video one image")
        else:
            first = next(iter(by_video.get(vid, {}).values()), im)
            if (first["width"], first["height"]) != (im["width"], im["height"]):
                bad(f"{im['width']}x{im['height']} but the video's other frames are {first['width']}x{first['height']}",
                    "give every frame of a video the same size")
                continue
            by_video.setdefault(vid, {})[fid] = im
            frame_of[iid] = (vid, fid)
    videos: dict[int, VideoRecord] = {}
    for vid, ims in by_video.items():
        first = next(iter(ims.values()))
        length = frames if frames else max(ims) + 1
        names = [str(ims[i].get("file_name", "")) if i in ims else "" for i in range(length)]
        videos[vid] = VideoRecord(vid, first["width"], first["height"], length, names)
    tracks: dict[tuple[int, Any], Track] = {}
    nth: dict[tuple[int, int, str], int] = {}
    anns = _annotations(doc)
    for a in anns:
        aid, iid = a.get("id"), a.get("image_id")
        if iid not in frame_of:
            problems.append(VideoProblem(None, aid, f"image id {iid!r} is not a usable frame",
                                         "point image_id at an image with video_id and frame_id (see the "
                                         "problems above for images that were left out)"))
            continue
        vid, fid = frame_of[iid]
        video = videos[vid]
        if (bad := _unknown_category(a, cats, vid, f"frame {fid}: ")) is not None:
            problems.append(bad)
            continue
        seg, box = a.get("segmentation"), a.get("bbox")
        seg = None if seg == [] else seg
        why = _check_segmentation(seg, video.height, video.width) or _check_box(box)
        if why is None and seg is None and box is None:
            why = "neither a segmentation nor a box"
        if why is not None:
            problems.append(VideoProblem(vid, aid, f"frame {fid}: {why}", "re-export the masks at the video's size"))
            continue
        cat = cats[a["category_id"]]
        key = _track_key(a)
        if key is None:
            n = nth.get((vid, fid, cat), 0)
            nth[(vid, fid, cat)] = n + 1
            key = ("nth", cat, n)
        else:
            key = ("id", cat, key)
        track = tracks.get((vid, key))
        if track is None:
            track = Track(int(aid) if _is_int(aid) else -len(tracks) - 1, cat,
                          [None] * video.length, [None] * video.length)
            tracks[(vid, key)] = track
            video.tracks.append(track)
        if track.segmentations[fid] is not None or track.bboxes[fid] is not None:
            problems.append(VideoProblem(vid, aid, f"frame {fid}: a second annotation of track {key[2]!r}",
                                         "give each track one annotation per frame"))
            continue
        track.segmentations[fid], track.bboxes[fid] = seg, box
    return VideoAnnotations(videos, problems, source)


def load_video_annotations(uri: str, frames: int | None = None) -> VideoAnnotations:
    """Read and validate video annotations (local path or ``s3://``): YouTube-VIS style, or COCO with
    frames as images (``frames``: the video's frame count, to report frame indices past its end)."""
    from nstray import storage

    try:
        doc = json.loads(storage.read_bytes(uri).decode("utf-8"))
    except storage.StorageError as exc:
        raise VideoAnnotationError(f"cannot read video annotations: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VideoAnnotationError(f"{uri}: not valid JSON ({exc}); give a YouTube-VIS style JSON file") from None
    if is_coco_frames(doc):
        return parse_coco_frames(doc, uri, frames)
    return parse_video_annotations(doc, uri)


class VideoMasks:
    """:class:`~nstray.data.masksource.MaskSource` of one annotated video: record = frame index.

    Frames decoded at another size than annotated get the label map resized (nearest) when the aspect
    ratio matches. A frame past the annotated length is an error naming the frame.
    """

    def __init__(self, video: VideoRecord, order: str | Sequence[str] = "smaller-on-top") -> None:
        self.video = video
        self.order = order

    @property
    def categories(self) -> list[str]:
        return self.video.categories

    def frame_labels(self, frame: int) -> np.ndarray | None:
        """The annotated label map of ``frame`` at the annotated size, or None when no track has a mask there."""
        from nstray.masks import MaskError, label_map

        v = self.video
        if not 0 <= frame < v.length:
            raise MaskSourceError(f"video {v.video_id}: frame {frame} is out of range; the annotations cover "
                                  f"{v.length} frames — annotate every frame or trim the video")
        present = [(k, p) for k, t in enumerate(v.tracks) if (p := t.part(frame)) is not None]
        if not present:
            return None
        try:
            lm = label_map([p for _, p in present], v.height, v.width, self.order)
        except MaskError as exc:
            raise MaskSourceError(f"video {v.video_id} frame {frame}: {exc}") from None
        remap = np.array([k for k, _ in present] + [-1], dtype=np.int32)
        return remap[lm]

    def labels(self, record: int, image: np.ndarray) -> PartLabels:
        lm = self.frame_labels(int(record))
        if lm is None:
            lm = np.full((self.video.height, self.video.width), -1, np.int32)
        lm = fit_labels(lm, image.shape[:2], f"video {self.video.video_id} frame {record}")
        return check_labels(PartLabels(lm, self.categories), image, f"video {self.video.video_id} frame {record}")


def fit_labels(lm: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
    """``lm`` resized (nearest) to ``shape`` (h, w) when the aspect ratio agrees within 1%."""
    if lm.shape == tuple(shape):
        return lm
    import cv2

    (h0, w0), (h, w) = lm.shape, shape
    if abs(w0 / h0 - w / h) > 0.01 * (w / h):
        raise MaskSourceError(f"{where}: masks are {w0}x{h0} but the frame is {w}x{h} (another aspect ratio); "
                              f"annotate the video at its own size")
    return cv2.resize(lm, (w, h), interpolation=cv2.INTER_NEAREST)

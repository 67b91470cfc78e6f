"""The data set side of the flow, one module per concern:

- `manifest`: the preprocess manifest (rows with provenance), read and written
- `classes`: the class map, by default `imagenet_wnids.txt` beside it
- `names`: the output-name rule (`result_key`) and the characters a stored name cannot hold
- `transform`: the reference transform, bit for bit torchvision's
- `images`: untrusted image files: opening, decoding, the size checks before decoding
- `tensors`: the `.bin` tensor files and the untrusted NPY header
- `discover`: finding the images of a data set and their labels
- `preprocess`: the preprocess stage and its worker processes

The names below are the package's interface to the rest of the toolkit.
"""

from .classes import IMAGENET_WNIDS, read_class_map
from .discover import discover_images
from .images import preprocess_image
from .manifest import (
    LIST_MAX_LINES,
    LIST_READ_LIMIT,
    MANIFEST_HEADER,
    MANIFEST_NAME,
    ManifestRow,
    read_manifest,
    write_manifest,
)
from .names import result_key
from .preprocess import preprocess_dataset
from .tensors import NPY_HEAD_BYTES, npy_header, read_tensor_file
from .transform import TRANSFORM_VERSION, reference_transform

__all__ = [
    "IMAGENET_WNIDS",
    "LIST_MAX_LINES",
    "LIST_READ_LIMIT",
    "MANIFEST_HEADER",
    "MANIFEST_NAME",
    "NPY_HEAD_BYTES",
    "TRANSFORM_VERSION",
    "ManifestRow",
    "discover_images",
    "npy_header",
    "preprocess_dataset",
    "preprocess_image",
    "read_class_map",
    "read_manifest",
    "read_tensor_file",
    "reference_transform",
    "result_key",
    "write_manifest",
]

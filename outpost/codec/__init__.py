"""The bundle codec: one file, one signed message (docs/bundle-format.md).

Pure parts (header.py, wire.py) take bytes or readers and return data; files.py is the
edge that touches the filesystem.
"""

from .files import (
    Inspection,
    PartWriter,
    fragment_count,
    fragment_header,
    inspect,
    pack_bytes,
    pack_file,
    pack_parts,
    read_payload,
    verify_file,
    write_fragment,
)
from .header import (
    BULK,
    EXPEDITED,
    NORMAL,
    PRIORITY_NAMES,
    Fragment,
    Header,
    Limits,
    Payload,
    decode_header,
    encode_header,
    new_id,
    validate_fragment,
)
from .wire import (
    MAGIC,
    Keyring,
    PayloadEncoder,
    head_bytes,
    iter_payload,
    open_verified,
    public_key,
    read_head,
    verify_signature,
)

__all__ = [
    "BULK",
    "EXPEDITED",
    "MAGIC",
    "NORMAL",
    "PRIORITY_NAMES",
    "Fragment",
    "Header",
    "Inspection",
    "Keyring",
    "Limits",
    "PartWriter",
    "Payload",
    "PayloadEncoder",
    "decode_header",
    "encode_header",
    "fragment_count",
    "fragment_header",
    "head_bytes",
    "inspect",
    "iter_payload",
    "new_id",
    "open_verified",
    "pack_bytes",
    "pack_file",
    "pack_parts",
    "public_key",
    "read_head",
    "read_payload",
    "validate_fragment",
    "verify_file",
    "verify_signature",
    "write_fragment",
]

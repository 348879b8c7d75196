"""A sweep's comparison table and plots in TensorBoard, beside its arms: the run ``summary``.

``tensorboard --logdir <sweep folder>`` lists one run per arm (``memlab.utils.run_names``) and
this one, whose TEXT tab holds ``summary/table`` (summary.md) and whose IMAGES tab holds the
sweep's plots as written (``summary/summary``, ``summary/summary_state_size``).
"""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

RUN = "summary"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_tensorboard_summary(sweep_dir: Path, table: str, images: list[Path]) -> Path:
    """Write ``table`` (markdown) and the PNG ``images`` that exist into ``<sweep_dir>/summary``,
    replacing what an earlier summary of the sweep wrote there; return that folder."""
    folder = sweep_dir / RUN
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    text = Summary.Value(
        tag=f"{RUN}/table",
        metadata=text_metadata.create_summary_metadata(display_name="", description=""),
        tensor=tensor_util.make_tensor_proto(table),
    )
    values = [text] + [
        Summary.Value(tag=f"{RUN}/{path.stem}", image=_png_summary(path.read_bytes()))
        for path in images
        if path.is_file()
    ]
    writer = SummaryWriter(log_dir=str(folder))
    try:
        writer._get_file_writer().add_summary(Summary(value=values), global_step=0)
    finally:
        writer.close()
    return folder


def _png_summary(png: bytes) -> Summary.Image:
    """The PNG as TensorBoard's image proto, its size read from the IHDR chunk."""
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", png[16:24])
    return Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)

"""Builtin Shapes models: their configs (data), checkpoint files, and safetensors save/load."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from weights.shapes.nets import ShapesNet, ShapesNetConfig

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "checkpoints"

BUILTIN_CONFIGS: dict[tuple[str, str], ShapesNetConfig] = {
    ("detection", "teacher"): ShapesNetConfig("detection", widths=(24, 48, 96, 192), depth=2, decoder_width=64,
                                              num_classes=5),
    ("detection", "student"): ShapesNetConfig("detection", widths=(16, 32, 64, 128), depth=1, decoder_width=32,
                                              num_classes=5),
    ("segmentation", "teacher"): ShapesNetConfig("segmentation", widths=(24, 48, 96, 192), depth=2,
                                                 decoder_width=48, num_classes=6),
    ("segmentation", "student"): ShapesNetConfig("segmentation", widths=(16, 32, 64, 128), depth=1,
                                                 decoder_width=32, num_classes=6),
}


def checkpoint_path(task: str, role: str, method: str | None = None) -> Path:
    """``shapes_<task>_<role>[_<method>].safetensors``: no method for the committed teachers and their first
    students."""
    return BUILTIN_DIR / f"shapes_{task}_{role}{'_' + method if method else ''}.safetensors"


def save_checkpoint(model: ShapesNet, path: Path, half: bool = False) -> None:
    """Save weights as safetensors with the config in the metadata, so a file describes itself.

    ``half`` stores floating-point tensors in fp16 (half the bytes); :func:`load_checkpoint` loads them as fp32.
    """
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": model.config.to_json(), "format": "pt"})


def load_checkpoint(path: str | Path) -> ShapesNet:
    """Load a ``ShapesNet`` from a safetensors file written by :func:`save_checkpoint` (CPU, fp32, eval)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "config" not in metadata:
        raise ValueError(f"{Path(path).name} has no ShapesNet config in its metadata")
    model = ShapesNet(ShapesNetConfig.from_json(metadata["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def load_builtin_model(task: str, role: str) -> ShapesNet:
    """The committed builtin ``ShapesNet`` of a task and role (see :func:`load_named_checkpoint`)."""
    return load_named_checkpoint(checkpoint_path(task, role).stem)


def load_named_checkpoint(name: str) -> ShapesNet:
    """A ``ShapesNet`` saved as ``weights/checkpoints/<name>.safetensors``; its config is in the file."""
    path = BUILTIN_DIR / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"builtin checkpoint {path.name} is missing; train it with "
                                "`python -m weights.shapes.train_nets`")
    return load_checkpoint(path)
